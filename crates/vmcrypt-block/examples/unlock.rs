//! Unlock a LUKS1/LUKS2 image with a key file and report the key slot, without touching
//! the image (`cryptsetup open --test-passphrase --key-file K IMG`): the vmcrypt side of
//! scripts/bench-unlock.sh.
//!
//! Usage: `unlock --key-file K IMG`
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use vmcrypt_block::drivers::file::FileDriver;
use vmcrypt_block::drivers::luks::LuksDriver;
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_error::{Error, Result};
use zeroize::Zeroizing;

fn run(args: &[String]) -> Result<u32> {
    let [flag, key, img] = args else {
        return Err(Error::usage("usage: unlock --key-file K IMG"));
    };
    if flag != "--key-file" {
        return Err(Error::usage("usage: unlock --key-file K IMG"));
    }
    let pass = Zeroizing::new(
        std::fs::read(key).map_err(|e| Error::usage(format!("reading key file {key}: {e}")))?,
    );
    let file = Arc::new(FileDriver::open(Path::new(img), true)?);
    let d = LuksDriver::open(file, None, Some(&pass), None, &KdfLimits::default())?;
    Ok(d.unlocked_slot().unwrap_or(0))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(slot) => {
            eprintln!("Key slot {slot} unlocked.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unlock: {e}");
            ExitCode::from(2)
        }
    }
}
