//! The persistent dirty bitmap directory (the bitmaps header extension points at it):
//! just enough to flag every bitmap "in use" before a writer that does not maintain
//! bitmaps changes the image, so QEMU treats them as inconsistent instead of trusting
//! stale bits. Entry layout: table offset (8), table size (4), flags (4), type (1),
//! granularity bits (1), name size (2), extra data size (4), then the extra data and
//! the name, padded to 8 bytes.
use super::be::u32_at;
use vmcrypt_error::{Result, ensure};

/// Flag bit 0 of a directory entry: the bitmap may be inconsistent.
pub const IN_USE: u32 = 1;
const ENTRY_HEADER: usize = 24;

/// Set [`IN_USE`] on each of the `count` entries of the directory `dir`.
pub fn mark_in_use(dir: &mut [u8], count: u32) -> Result<()> {
    let mut pos = 0usize;
    for i in 0..count {
        ensure!(
            pos + ENTRY_HEADER <= dir.len(),
            Corrupt,
            "qcow2: bitmap directory entry {i} is beyond the directory ({} bytes)",
            dir.len()
        );
        let flags = u32_at(dir, pos + 12) | IN_USE;
        dir[pos + 12..pos + 16].copy_from_slice(&flags.to_be_bytes());
        let name = u16::from_be_bytes([dir[pos + 18], dir[pos + 19]]) as usize;
        let extra = u32_at(dir, pos + 20) as usize;
        pos = (pos + ENTRY_HEADER + extra + name).next_multiple_of(8);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, extra: usize) -> Vec<u8> {
        let mut e = vec![0u8; ENTRY_HEADER];
        e[12..16].copy_from_slice(&2u32.to_be_bytes()); // "auto"
        e[18..20].copy_from_slice(&(name.len() as u16).to_be_bytes());
        e[20..24].copy_from_slice(&(extra as u32).to_be_bytes());
        e.extend(vec![0xee; extra]);
        e.extend(name.as_bytes());
        e.resize(e.len().next_multiple_of(8), 0);
        e
    }

    #[test]
    fn flags_every_entry_and_keeps_the_rest() {
        let mut dir = [entry("b0", 0), entry("longer-name", 4)].concat();
        let before = dir.clone();
        mark_in_use(&mut dir, 2).unwrap();
        let second = entry("b0", 0).len();
        assert_eq!(u32_at(&dir, 12), 3);
        assert_eq!(u32_at(&dir, second + 12), 3);
        let changed: Vec<usize> = (0..dir.len()).filter(|&i| dir[i] != before[i]).collect();
        assert_eq!(changed, vec![15, second + 15]);
        assert!(
            mark_in_use(&mut dir, 3).is_err(),
            "a third entry is past the end"
        );
    }
}
