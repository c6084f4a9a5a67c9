//! `vmcrypt clone`: flags -> [`CloneRequest`] (or, with `--flatten`, the flatten job),
//! with qemu-img's `-p` progress line.
use super::common::ImageOpts;
use vmcrypt_block::jobs::clone::{CloneRequest, flatten, run as clone};
use vmcrypt_error::{Result, bail};

/// Flags of `vmcrypt clone`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub image: ImageOpts,
    /// Format of the clone (default: the source's; a linked clone is qcow2)
    #[arg(short = 'O')]
    pub out_format: Option<String>,
    /// Options of the clone, its new key among them: encrypt.key-secret=ID (qcow2) or
    /// key-secret=ID (luks)
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Make a qcow2 overlay over SRC whose own writes use the new key (a linked clone)
    #[arg(long = "linked", conflicts_with = "flatten")]
    pub linked: bool,
    /// Copy what the linked clone IMAGE reads from its backing chain into it under its
    /// own key, then drop the backing file (takes one image)
    #[arg(long = "flatten")]
    pub flatten: bool,
    /// Show a progress bar
    #[arg(short = 'p')]
    pub progress: bool,
    /// Source image (with --flatten: the linked clone)
    pub source: String,
    /// The new image
    pub target: Option<String>,
}

pub fn run(a: Args) -> Result<u8> {
    let (env, source) = a.image.open_parts(&a.source);
    let ui = a.image.ui(a.progress);
    if a.flatten {
        if a.target.is_some() || a.out_format.is_some() || !a.options.is_empty() {
            bail!(
                Usage,
                "--flatten takes one image (the linked clone, with its keys) and no -O/-o"
            );
        }
        ui.run(|ui| flatten(&source, &env, ui))?;
        return Ok(0);
    }
    let Some(target) = a.target else {
        bail!(Usage, "clone needs a source and a target image");
    };
    let req = CloneRequest {
        source,
        target,
        out_format: a.out_format,
        options: a.options,
        linked: a.linked,
    };
    ui.run(|ui| clone(&req, &env, ui))?;
    Ok(0)
}
