//! Parsers of the snapshot table and the bitmap directory for the qcow2 checker: just
//! the fields the reference count needs, with QEMU's caps on sizes.
use super::{Image, MAX_BITMAP_DIR_BYTES, MAX_SNAPSHOT_EXTRA, read_padded};
use vmcrypt_error::{Result, ensure};

/// One snapshot table entry's fields the check needs.
pub(super) struct Snapshot {
    pub id: String,
    pub name: String,
    pub l1_offset: u64,
    pub l1_size: u32,
    pub extra_data_size: u32,
}

/// Read the snapshot table entry at `pos`; returns it and its length (unpadded).
pub(super) fn read_snapshot(img: &Image, pos: u64) -> Result<(Snapshot, u64)> {
    // Past the end of the file an entry reads as zeros (qemu-img then calls it
    // incomplete).
    let mut fixed = [0u8; 40];
    read_padded(img.file, &mut fixed, pos)?;
    let be32 = |o: usize| u32::from_be_bytes(fixed[o..o + 4].try_into().expect("4"));
    let be16 = |o: usize| u16::from_be_bytes(fixed[o..o + 2].try_into().expect("2"));
    let (id_len, name_len, extra) = (u64::from(be16(12)), u64::from(be16(14)), be32(36));
    ensure!(
        extra <= MAX_SNAPSHOT_EXTRA,
        Corrupt,
        "qcow2: snapshot table entry at {pos:#x} has {extra} bytes of extra data (at most {MAX_SNAPSHOT_EXTRA})"
    );
    let var = u64::from(extra) + id_len + name_len;
    let mut rest = vec![0u8; var as usize];
    read_padded(img.file, &mut rest, pos.saturating_add(40))?;
    let ids = &rest[extra as usize..];
    let sn = Snapshot {
        l1_offset: u64::from_be_bytes(fixed[0..8].try_into().expect("8")),
        l1_size: be32(8),
        extra_data_size: extra,
        id: String::from_utf8_lossy(&ids[..id_len as usize]).into_owned(),
        name: String::from_utf8_lossy(&ids[id_len as usize..]).into_owned(),
    };
    Ok((sn, 40 + var))
}

/// The (offset, entries) of every bitmap table in the bitmap directory.
pub(super) fn bitmap_tables(img: &Image, offset: u64, size: u64) -> Result<Vec<(u64, u32)>> {
    ensure!(
        size <= MAX_BITMAP_DIR_BYTES && offset.checked_add(size).is_some_and(|e| e <= img.file_len),
        Corrupt,
        "bitmap directory at {offset:#x} ({size} bytes) is too large or beyond the end of the file"
    );
    let mut dir = vec![0u8; size as usize];
    img.file.read_at(&mut dir, offset)?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < dir.len() {
        ensure!(
            pos + 24 <= dir.len(),
            Corrupt,
            "bitmap directory entry at {pos} is truncated"
        );
        let e = &dir[pos..];
        let table = u64::from_be_bytes(e[0..8].try_into().expect("8"));
        let entries = u32::from_be_bytes(e[8..12].try_into().expect("4"));
        let name = u64::from(u16::from_be_bytes(e[18..20].try_into().expect("2")));
        let extra = u64::from(u32::from_be_bytes(e[20..24].try_into().expect("4")));
        let len = (24 + extra + name).next_multiple_of(8);
        ensure!(
            pos as u64 + len <= dir.len() as u64,
            Corrupt,
            "bitmap directory entry at {pos} runs past the directory"
        );
        out.push((table, entries));
        pos += len as usize;
    }
    Ok(out)
}
