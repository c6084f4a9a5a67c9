//! `vmcrypt map` (qemu-img map): flags -> [`MapRequest`] -> the map as JSON or as the
//! human table. An image that cannot be opened or read exits with the README's status
//! for the error (4 for a corrupt or hostile one, such as a backing loop); the human
//! table's refusal of data without a host offset exits with qemu-img's 1.
use super::common::{Output, ReportOpts};
use std::io::Write;
use vmcrypt_block::jobs::map::{MapRequest, NO_OFFSET_MSG, TableEnd};
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
        return Ok(0);
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let r = req.human(&env, &mut ui, &mut lock);
    let _ = lock.flush();
    match r? {
        TableEnd::Complete => Ok(0),
        // Like qemu-img: the table cannot show such data, the image is fine (exit 1).
        TableEnd::NoHostOffset => {
            eprintln!("vmcrypt: {NO_OFFSET_MSG}");
            Ok(1)
        }
    }
}
