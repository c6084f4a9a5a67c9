//! `vmcrypt luks repair`: rewrite a damaged or outdated LUKS2 header copy from the
//! valid one (cryptsetup repair).
use super::opts::DeviceArgs;
use vmcrypt_block::jobs::luks::luks2::repair;
use vmcrypt_error::Result;

pub fn run(a: &DeviceArgs) -> Result<u8> {
    if repair(&a.key.target(&a.device))? {
        eprintln!("LUKS2 header repaired: both copies rewritten.");
    } else {
        eprintln!("No repair needed: both LUKS2 header copies are valid.");
    }
    Ok(0)
}
