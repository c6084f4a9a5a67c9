//! `vmcrypt luks test-key`: check a passphrase without changing anything
//! (open --test-passphrase).
use super::opts::DeviceArgs;
use vmcrypt_block::jobs::luks::slots::test_key;
use vmcrypt_error::Result;

pub fn run(a: &DeviceArgs) -> Result<u8> {
    let mut keys = a.key.keys(&a.device, None);
    let slot = test_key(&a.key.target(&a.device), a.key.key_slot, &mut keys)?;
    eprintln!("Key slot {slot} unlocked.");
    Ok(0)
}
