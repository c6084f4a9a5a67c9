//! Copying a range from one node to another as it is (a reencryption journal, a data
//! shift's move): the default of [`BlockDriver::copy_from`], which reads and writes
//! through a buffer. A `file` node copying from a `file` node has the kernel copy
//! instead (`drivers/file.rs`), falling back on this; a `raw` window passes a copy
//! into it to its child (`drivers/raw.rs`).
use super::BlockDriver;
use vmcrypt_error::Result;

/// Piece of a buffered copy.
const PIECE: u64 = 1 << 20;

/// Copy `len` bytes at `from` of `src` to `to`, each piece written by `write`, in 1 MiB
/// pieces through one buffer. The pieces go from the end when the destination lies
/// after the source, so a copy within one node whose ranges overlap reads every byte
/// before it is overwritten.
pub(crate) fn copy_buffered(
    src: &dyn BlockDriver,
    from: u64,
    to: u64,
    len: u64,
    write: &mut dyn FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; PIECE.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = PIECE.min(len - done);
        let rel = if to > from { len - done - n } else { done };
        let piece = &mut buf[..n as usize];
        src.read_at(piece, from + rel)?;
        write(piece, to + rel)?;
        done += n;
    }
    Ok(())
}
