//! `vmcrypt convert` (qemu-img convert): flags -> [`ConvertRequest`] -> the convert job,
//! with qemu-img's `-p` progress line.
use super::common::{ImageOpts, print_option_help};
use vmcrypt_block::jobs::convert::{ConvertRequest, run as convert};
use vmcrypt_block::jobs::options::wants_help;
use vmcrypt_error::{Result, bail};

/// Flags of `vmcrypt convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub image: ImageOpts,
    #[arg(short = 'O', default_value = "raw")]
    pub out_format: String,
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Target exists: do not create it
    #[arg(short = 'n')]
    pub no_create: bool,
    /// Treat the target name as image options (needs -n)
    #[arg(long = "target-image-opts")]
    pub target_image_opts: bool,
    /// Show a progress bar
    #[arg(short = 'p')]
    pub progress: bool,
    /// Cache mode of the target (accepted for compatibility)
    #[arg(short = 't')]
    pub cache: Option<String>,
    /// Cache mode of the source (accepted for compatibility)
    #[arg(short = 'T')]
    pub src_cache: Option<String>,
    /// Source image (not needed with -o help)
    pub source: Option<String>,
    /// Target image
    pub target: Option<String>,
}

pub fn run(a: Args) -> Result<u8> {
    if wants_help(&a.options) {
        return print_option_help(&a.out_format);
    }
    let (Some(source), Some(target)) = (&a.source, a.target) else {
        bail!(Usage, "convert needs a source and a target image");
    };
    let (env, source) = a.image.open_parts(source);
    let req = ConvertRequest {
        source,
        target,
        out_format: a.out_format,
        options: a.options,
        no_create: a.no_create,
        target_image_opts: a.target_image_opts,
    };
    a.image.ui(a.progress).run(|ui| convert(&req, &env, ui))?;
    Ok(0)
}
