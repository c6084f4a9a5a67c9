//! Secret UUIDs: parsed from libvirt's forms (`8-4-4-4-12` hex with hyphens, or 32 hex
//! digits), printed in the hyphenated lower-case form, generated as random version 4.
use std::fmt;
use std::str::FromStr;
use vmcrypt_error::{Error, Result};

/// A secret's 16-byte UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random (version 4, RFC 4122 variant) UUID.
    pub fn random() -> Result<Uuid> {
        let mut b = [0u8; 16];
        vmcrypt_crypto::random::fill(&mut b)?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Ok(Uuid(b))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for Uuid {
    type Err = Error;

    /// Hyphens may appear anywhere (libvirt skips them); exactly 32 hex digits remain.
    fn from_str(s: &str) -> Result<Uuid> {
        let bad = || Error::usage(format!("malformed uuid element '{s}'"));
        let digits: Vec<u8> = s.trim().bytes().filter(|&c| c != b'-').collect();
        if digits.len() != 32 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_and_generate() {
        let u: Uuid = "0A81F5B2-8403-7b23-c8d6-21ccc2f80d6f".parse().unwrap();
        assert_eq!(u.to_string(), "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f");
        let v: Uuid = "0a81f5b284037b23c8d621ccc2f80d6f".parse().unwrap();
        assert_eq!(u, v);
        assert!("0a81f5b2-8403".parse::<Uuid>().is_err());
        assert!(
            "zz81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
                .parse::<Uuid>()
                .is_err()
        );
        let r = Uuid::random().unwrap();
        assert_eq!(r.0[6] >> 4, 4);
        assert_eq!(r.0[8] >> 6, 2);
        assert_ne!(r, Uuid::random().unwrap());
        assert_eq!(r.to_string().parse::<Uuid>().unwrap(), r);
    }
}
