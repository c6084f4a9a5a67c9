//! Shared by the LUKS2 fuzz entry points (`luks2_load` in `format.rs`, `luks_driver`
//! in `luks_driver.rs`): make a mutated header's stored checksum correct, so the
//! mutations reach the parser instead of stopping at the checksum.
use vmcrypt_format::luks2::binary::{self, BinaryHeader, CSUM_RANGE, HeaderCopy};
use vmcrypt_format::luks2::{BIN_HEADER_SIZE, HeaderHasher};

/// Store a correct checksum in the LUKS2 binary header at `off` of `buf`, if one
/// decodes there. Only the checksum field is written: the other bytes stay exactly as
/// the input has them.
pub fn fix_checksum(buf: &mut [u8], off: usize, copy: HeaderCopy, hasher: &dyn HeaderHasher) {
    let Some(bin_bytes) = buf.get(off..off + BIN_HEADER_SIZE) else {
        return;
    };
    let Ok(bin) = BinaryHeader::decode(bin_bytes, copy, off as u64) else {
        return;
    };
    let area_end = (off as u64 + bin.hdr_size).min(buf.len() as u64) as usize;
    let area = &buf[off + BIN_HEADER_SIZE..area_end];
    if let Ok(sum) = binary::checksum(bin_bytes, area, &bin.checksum_alg, hasher) {
        let csum = &mut buf[off + CSUM_RANGE.start..off + CSUM_RANGE.end];
        csum.fill(0);
        csum[..sum.len()].copy_from_slice(&sum);
    }
}
