//! Image-level operations, one module each: what a command does once its arguments are
//! parsed. Each takes a typed request and returns a typed report; nothing here prints.
//! Warnings and progress reach the caller through [`Events`]; the qemu-img-shaped text
//! and JSON renderings live beside the report types (`render_*` / `json` methods), so a
//! front end only chooses which one to print.
//!
//! Images are named by an [`ImageArg`] (a filename, `json:{...}` or `--image-opts`
//! string, with `-f` and `-U`) and opened with an [`Env`] (the secrets and KDF limits).
pub mod check;
pub mod clone;
pub mod commit;
pub mod compare;
pub mod convert;
mod convert_parallel;
mod convert_target;
pub mod create;
pub mod create_request;
pub mod glue;
pub mod image_arg;
pub mod info;
pub mod luks;
pub mod map;
pub mod options;
pub mod rbd;
pub mod rebase;
pub mod rekey;
mod rekey_luks;
pub mod resize;
#[cfg(test)]
mod testutil;

pub use image_arg::{Env, ImageArg};

/// What a job tells its caller while it runs. Both methods default to doing nothing.
pub trait Events {
    /// A warning for the user (qemu-img prints these on stderr).
    fn warning(&mut self, _text: &str) {}
    /// `done` of `total` units processed (bytes; reported after each step).
    fn progress(&mut self, _done: u64, _total: u64) {}
}

/// [`Events`] that are dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl Events for NoEvents {}
