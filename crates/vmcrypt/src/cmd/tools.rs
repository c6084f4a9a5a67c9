//! `vmcrypt map` and `vmcrypt compare` (qemu-img map / compare): open the images, call
//! the library, print, and map failures to qemu-img's exit codes (map: 1, compare: 2).
use super::{open_image, secrets};
use crate::cli::Common;
use std::io::Write;
use vmcrypt_block::jobs::compare::{Outcome, compare};
use vmcrypt_block::jobs::map::{map_human, map_json};
use vmcrypt_error::{Error, Result, bail};

/// Report `e` and return qemu-img's exit status `code` for it.
fn failed(e: &Error, code: u8) -> u8 {
    eprintln!("vmcrypt: {}", e.display_chain());
    code
}

/// The arguments of `vmcrypt map`.
pub struct MapArgs<'a> {
    pub common: &'a Common,
    pub format: Option<&'a str>,
    pub output: &'a str,
    pub start: u64,
    pub max_length: Option<u64>,
    pub filename: &'a str,
}

pub fn map(a: &MapArgs) -> Result<u8> {
    if a.output != "human" && a.output != "json" {
        bail!(Usage, "--output must be human or json, not '{}'", a.output);
    }
    let run = || -> Result<()> {
        let store = secrets(a.common)?;
        let node = open_image(a.common, a.format, a.filename, &store, true, false)?;
        if a.output == "json" {
            let text = map_json(node.as_ref(), a.start, a.max_length)?;
            out!("{text}");
            return Ok(());
        }
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let r = map_human(node.as_ref(), a.start, a.max_length, &mut lock);
        let _ = lock.flush();
        r
    };
    Ok(run().err().map_or(0, |e| failed(&e, 1)))
}

/// The arguments of `vmcrypt compare`.
pub struct CompareArgs<'a> {
    pub common: &'a Common,
    pub format1: Option<&'a str>,
    pub format2: Option<&'a str>,
    pub strict: bool,
    pub image1: &'a str,
    pub image2: &'a str,
}

pub fn compare_images(a: &CompareArgs) -> Result<u8> {
    let quiet = a.common.quiet;
    let run = || -> Result<u8> {
        let store = secrets(a.common)?;
        let first = open_image(a.common, a.format1, a.image1, &store, true, false)?;
        let second = open_image(a.common, a.format2, a.image2, &store, true, false)?;
        let (outcome, report) = compare(first.as_ref(), second.as_ref(), a.strict)?;
        let say = |s: String| {
            if !quiet {
                outln!("{s}");
            }
        };
        if report.size_mismatch && !a.strict {
            say("Warning: Image size mismatch!".into());
        }
        Ok(match outcome {
            Outcome::Identical => {
                say("Images are identical.".into());
                0
            }
            Outcome::Mismatch(at) => {
                say(format!("Content mismatch at offset {at}!"));
                1
            }
            Outcome::SizeMismatch => {
                say("Strict mode: Image size mismatch!".into());
                1
            }
            Outcome::StatusMismatch(at) => {
                say(format!("Strict mode: Offset {at} block status mismatch!"));
                1
            }
        })
    };
    Ok(run().unwrap_or_else(|e| failed(&e, 2)))
}
