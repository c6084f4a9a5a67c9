//! `vmcrypt create` (qemu-img create): flags -> [`CreateRequest`] -> plan, print
//! qemu-img's "Formatting ..." line, create.
use super::common::{Common, Ui, print_option_help};
use vmcrypt_block::jobs::create_request::{CreateRequest, plan};
use vmcrypt_block::jobs::options::wants_help;
use vmcrypt_error::Result;

/// Flags of `vmcrypt create`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(short = 'f', default_value = "raw")]
    pub format: String,
    /// Format options (key=value,...); -o help lists them
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Backing file (qcow2; same as -o backing_file=)
    #[arg(short = 'b', value_name = "BACKING_FILE")]
    pub backing: Option<String>,
    /// Format of the backing file (same as -o backing_fmt=)
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Do not open the backing file (the size must be given)
    #[arg(short = 'u')]
    pub unsafe_backing: bool,
    /// Image to create (not needed with -o help)
    pub filename: Option<String>,
    pub size: Option<String>,
}

pub fn run(a: Args) -> Result<u8> {
    if wants_help(&a.options) {
        return print_option_help(&a.format);
    }
    let env = a.common.env();
    let req = CreateRequest {
        filename: a.filename,
        format: a.format,
        options: a.options,
        backing: a.backing,
        backing_format: a.backing_format,
        unsafe_backing: a.unsafe_backing,
        size: a.size,
        force_share: a.common.force_share,
    };
    let plan = plan(&req, &env, &mut Ui::new(&a.common))?;
    if !a.common.quiet {
        outln!("{}", plan.summary());
    }
    plan.run(&env)?;
    Ok(0)
}
