//! `vmcrypt rekey`: flags -> [`RekeyRequest`] -> the rekey job (a new volume key for a
//! qcow2+LUKS image in place, or for a LUKS1 image by copy and rename), with qemu-img's
//! `-p` progress line.
use super::common::ImageOpts;
use vmcrypt_block::jobs::rekey::{RekeyReport, RekeyRequest, run as rekey};
use vmcrypt_error::Result;

/// Flags of `vmcrypt rekey`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub image: ImageOpts,
    /// The new LUKS header: encrypt.key-secret=ID (qcow2; key-secret=ID for luks),
    /// required, iter-time=MS, hash-alg, cipher options (default: the current header's)
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Show progress
    #[arg(short = 'p')]
    pub progress: bool,
    /// The image, with its current key (--image-opts ...,encrypt.key-secret=ID or
    /// driver=luks,...,key-secret=ID)
    pub filename: String,
}

pub fn run(a: Args) -> Result<u8> {
    let (env, image) = a.image.open_parts(&a.filename);
    let req = RekeyRequest {
        image,
        options: a.options,
    };
    let quiet = a.image.common.quiet;
    let report = a.image.ui(a.progress).run(|ui| rekey(&req, &env, ui))?;
    if quiet {
        return Ok(0);
    }
    match report {
        RekeyReport::InPlace(s) => println!(
            "Re-encrypted {} clusters ({} bytes, {} L2 tables) under a new volume key; freed {} old clusters",
            s.clusters, s.bytes, s.l2_tables, s.freed_clusters
        ),
        RekeyReport::Copied { bytes } => println!(
            "Copied {bytes} bytes under a new volume key and replaced the image with the copy"
        ),
    }
    Ok(0)
}
