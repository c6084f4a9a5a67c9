//! Image-level operations, one module each: what a command does once its arguments are
//! parsed. Each takes a typed request and returns a typed report; the CLI only prints it.
pub mod compare;
pub mod convert;
pub mod create;
pub mod info;
pub mod luks;
pub mod map;
pub mod rebase;
