//! Standard base64 (RFC 4648, `+/` alphabet, `=` padding) as LUKS2 stores salts and
//! digests. Decoding is strict: no whitespace, padding required, no trailing garbage.
use vmcrypt_error::{Result, bail};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encode `data` with padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn value(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// Decode padded base64; `field` names the JSON field in errors.
pub fn decode(text: &str, field: &str) -> Result<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        bail!(
            Corrupt,
            "LUKS2 {field}: base64 length {} is not a multiple of 4",
            bytes.len()
        );
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (qi, q) in bytes.chunks(4).enumerate() {
        let last = qi + 1 == quads;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            bail!(Corrupt, "LUKS2 {field}: misplaced base64 padding");
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            let Some(v) = value(c) else {
                bail!(
                    Corrupt,
                    "LUKS2 {field}: invalid base64 character {:?}",
                    c as char
                );
            };
            n = (n << 6) | v;
        }
        n <<= 6 * pad as u32;
        let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&got[..3 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc, "t").unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!A==", "Zm 9v"] {
            assert!(decode(bad, "salt").is_err(), "{bad}");
        }
    }
}
