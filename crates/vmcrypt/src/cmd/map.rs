//! `vmcrypt map` (qemu-img map): flags -> [`MapRequest`] -> the map as JSON or as the
//! human table; any failure exits with qemu-img's status 1.
use super::common::{Output, ReportOpts, failed};
use std::io::Write;
use vmcrypt_block::jobs::map::MapRequest;
use vmcrypt_block::opts::parse_size;
use vmcrypt_error::Result;

/// Flags of `vmcrypt map`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub opts: ReportOpts,
    /// First guest byte to map
    #[arg(long = "start-offset", value_name = "OFFSET", default_value = "0")]
    pub start_offset: String,
    /// Map at most this many bytes
    #[arg(long = "max-length", value_name = "LENGTH")]
    pub max_length: Option<String>,
    pub filename: String,
}

pub fn run(a: Args) -> Result<u8> {
    let start = parse_size(&a.start_offset)?;
    let max_length = a.max_length.as_deref().map(parse_size).transpose()?;
    let output = a.opts.output()?;
    let run = || -> Result<()> {
        let (env, image) = a.opts.image.open_parts(&a.filename);
        let req = MapRequest {
            image,
            start,
            max_length,
        };
        let mut ui = a.opts.image.ui(false);
        if output == Output::Json {
            let text = req.json(&env, &mut ui)?;
            out!("{text}");
            return Ok(());
        }
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let r = req.human(&env, &mut ui, &mut lock);
        let _ = lock.flush();
        r
    };
    Ok(run().err().map_or(0, |e| failed(&e, 1)))
}
