//! What a new LUKS volume (either version) gets: a volume key and a UUID, given or random.
use vmcrypt_crypto::{SecretBytes, random};
use vmcrypt_error::{Error, ErrorKind, Result, ensure};

/// The volume key of a new volume: the one given (checked against the cipher's key size)
/// or a random one.
pub(crate) fn new_volume_key(given: Option<&SecretBytes>, key_bytes: usize) -> Result<SecretBytes> {
    match given {
        Some(k) => {
            ensure!(
                k.len() == key_bytes,
                Usage,
                "volume key is {} bytes, the cipher needs {key_bytes}",
                k.len()
            );
            Ok(k.clone())
        }
        None => SecretBytes::random(key_bytes),
    }
}

/// The UUID of a new volume: the one given (checked) or a random one.
pub(crate) fn new_uuid(given: Option<&str>) -> Result<String> {
    match given {
        Some(u) => validate_uuid(u).map(|_| u.to_string()),
        None => random_uuid(),
    }
}

/// Check a UUID string's shape (8-4-4-4-12 hex digits).
pub(crate) fn validate_uuid(u: &str) -> Result<()> {
    let groups: Vec<&str> = u.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, l)| g.len() == l && g.bytes().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("'{u}' is not a valid UUID"),
        ));
    }
    Ok(())
}

/// A random (version 4) UUID string.
fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    random::fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}
