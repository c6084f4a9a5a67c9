//! `vmcrypt qemu-args`: print the `-object secret` and `-blockdev` arguments with which
//! QEMU opens an image natively (built by `vmcrypt_block::jobs::glue::qemu_args`), one
//! shell-quoted word per line.
use super::common::Common;
use clap::Args;
use vmcrypt_block::jobs::glue::print::{Syntax, shell_quote};
use vmcrypt_block::jobs::glue::qemu_args::{QemuArgsRequest, qemu_args};
use vmcrypt_error::Result;

/// Arguments of `vmcrypt qemu-args`.
#[derive(Args, Debug)]
pub struct QemuArgsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Image format (probed when omitted)
    #[arg(short = 'f')]
    pub format: Option<String>,
    /// node-name of the top block node (what -device ...,drive=NAME refers to)
    #[arg(long = "node-name", default_value = "disk0")]
    pub node_name: String,
    /// human: -blockdev in keyval syntax; json: -blockdev in JSON syntax
    #[arg(long = "output", default_value = "human")]
    pub output: String,
    /// The image (a filename, json:{...}, or options with --image-opts)
    pub image: String,
}

pub fn run(a: &QemuArgsArgs) -> Result<u8> {
    let syntax = Syntax::from_output(&a.output)?;
    let args = qemu_args(&QemuArgsRequest {
        image: a.common.image(a.format.as_deref(), &a.image),
        objects: &a.common.objects,
        node_name: &a.node_name,
        syntax,
        limits: a.common.limits.limits(),
    })?;
    if !a.common.quiet {
        for w in &args.warnings {
            eprintln!("vmcrypt: {w}");
        }
    }
    for word in &args.words {
        println!("{}", shell_quote(word));
    }
    Ok(0)
}
