//! Running one validated command against a block node. These functions are synchronous:
//! they run on tokio's blocking pool, or on the connection's own task when the request
//! is small and the node answers quickly (see [`super::pace`]); each appends the complete
//! reply bytes to a buffer of replies.
//!
//! TRIM goes to the node's `discard` (then a flush when FUA is set). It is advisory in
//! NBD: qcow2 turns whole clusters into zero clusters, while raw and LUKS nodes ignore it
//! (on an encrypted node, punching holes in the ciphertext would reveal which blocks
//! are in use). WRITE_ZEROES uses the node's
//! `write_zeroes` (which may punch holes in a raw file) unless NO_HOLE is set, in
//! which case zero buffers are written so the range stays allocated. A FAST_ZERO request
//! succeeds at once when the node reports the whole range as already reading zeros (and
//! NO_HOLE is not set); otherwise it fails with ENOTSUP, as the spec demands of a server
//! that cannot zero faster than writing (the block layer offers no cheaper zeroing
//! that is guaranteed, and an encrypting node must write ciphertext of zeros).
use crate::proto::transmission::{Command, Replies, allocation_flags, block_status_chunk};
use crate::proto::{BASE_ALLOCATION_ID, NbdError};
use vmcrypt_block::BlockDriver;
use vmcrypt_error::{Error, Result, bail};

/// Most descriptors sent in one BLOCK_STATUS reply (the spec lets us cover a prefix).
const MAX_EXTENTS: usize = 1024;

/// Run `cmd` (never `Disconnect`) on `node` and append its reply for `cookie` to `out`
/// (a READ's data goes straight into `out`, after its header). A WRITE's `payload` may
/// be clobbered (an encrypting node encrypts it in place).
pub(crate) fn execute(
    node: &dyn BlockDriver,
    cmd: Command,
    payload: &mut [u8],
    replies: Replies,
    cookie: u64,
    out: &mut Vec<u8>,
) {
    let result = match cmd {
        Command::Read { offset, length } => {
            return read(node, (offset, length), replies, cookie, out);
        }
        Command::BlockStatus {
            offset,
            length,
            req_one,
        } => {
            let reply = block_status(node, offset, length, req_one, replies, cookie);
            return out.extend_from_slice(&reply);
        }
        Command::Write { offset, fua, .. } => node
            .write_at_mut(payload, offset)
            .and_then(|()| fua_flush(node, fua)),
        Command::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
            fast: true,
        } => fast_zeroes(node, offset, length, no_hole).and_then(|()| fua_flush(node, fua)),
        Command::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
            fast: false,
        } => zeroes(node, offset, length, no_hole).and_then(|()| fua_flush(node, fua)),
        Command::Trim {
            offset,
            length,
            fua,
        } => node
            .discard(offset, u64::from(length))
            .and_then(|()| fua_flush(node, fua)),
        Command::Flush => node.flush(),
        Command::Cache | Command::Disconnect => Ok(()),
    };
    match result {
        Ok(()) => replies.push_ok(cookie, out),
        Err(e) => out.extend_from_slice(&error_reply(replies, cookie, &e)),
    }
}

/// Encode a block-layer error as an NBD error reply.
pub(crate) fn error_reply(replies: Replies, cookie: u64, e: &Error) -> Vec<u8> {
    let code = NbdError::from_kind(e.kind());
    tracing::debug!(cookie, error = ?code, "request failed: {}", e.display_chain());
    replies.error(cookie, code, &e.display_chain())
}

fn fua_flush(node: &dyn BlockDriver, fua: bool) -> Result<()> {
    if fua { node.flush() } else { Ok(()) }
}

/// Append the reply header of a READ of `length` bytes at `offset`, then the data; on a
/// failed read, only the error reply.
fn read(
    node: &dyn BlockDriver,
    (offset, length): (u64, u32),
    replies: Replies,
    cookie: u64,
    out: &mut Vec<u8>,
) {
    if length == 0 {
        return replies.push_ok(cookie, out);
    }
    let start = out.len();
    replies.push_read_header(cookie, offset, length, out);
    let data = out.len();
    out.resize(data + length as usize, 0);
    if let Err(e) = node.read_at(&mut out[data..], offset) {
        out.truncate(start);
        out.extend_from_slice(&error_reply(replies, cookie, &e));
    }
}

fn zeroes(node: &dyn BlockDriver, offset: u64, length: u32, no_hole: bool) -> Result<()> {
    if !no_hole {
        return node.write_zeroes(offset, u64::from(length));
    }
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(length as usize)];
    let mut done = 0usize;
    while done < length as usize {
        let n = CHUNK.min(length as usize - done);
        node.write_at(&zeros[..n], offset + done as u64)?;
        done += n;
    }
    Ok(())
}

/// A fast zero: nothing to do when the range already reads as zeros, else ENOTSUP.
fn fast_zeroes(node: &dyn BlockDriver, offset: u64, length: u32, no_hole: bool) -> Result<()> {
    let end = offset + u64::from(length);
    let mut pos = offset;
    while pos < end && !no_hole {
        let e = node.block_status(pos, end - pos)?;
        if e.allocation != vmcrypt_block::Allocation::Zero || e.length == 0 {
            break;
        }
        pos += e.length.min(end - pos);
    }
    if pos >= end && !no_hole {
        return Ok(());
    }
    bail!(
        Unsupported,
        "fast zero of {length} bytes at {offset}: driver '{}' cannot zero that range quickly",
        node.driver_name()
    )
}

/// Collect `(length, flags)` descriptors covering a prefix of the range.
fn extents(
    node: &dyn BlockDriver,
    offset: u64,
    length: u32,
    max: usize,
) -> Result<Vec<(u32, u32)>> {
    let end = offset + u64::from(length);
    let mut pos = offset;
    let mut out: Vec<(u32, u32)> = Vec::new();
    while pos < end {
        let e = node.block_status(pos, end - pos)?;
        if e.offset != pos || e.length == 0 {
            bail!(
                Internal,
                "driver '{}' answered block status at {pos} with extent {}+{}",
                node.driver_name(),
                e.offset,
                e.length
            );
        }
        let len = e.length.min(end - pos);
        let flags = allocation_flags(e.allocation);
        // Lengths are at most `length`, a u32, so the casts cannot truncate.
        let full = out.len() == max;
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += len as u32,
            _ if full => break,
            _ => out.push((len as u32, flags)),
        }
        pos += len;
    }
    Ok(out)
}

fn block_status(
    node: &dyn BlockDriver,
    offset: u64,
    length: u32,
    req_one: bool,
    replies: Replies,
    cookie: u64,
) -> Vec<u8> {
    let max = if req_one { 1 } else { MAX_EXTENTS };
    match extents(node, offset, length, max) {
        Ok(ext) => block_status_chunk(cookie, BASE_ALLOCATION_ID, &ext),
        Err(e) => error_reply(replies, cookie, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::transmission::{none_chunk, simple_reply};
    use vmcrypt_block::drivers::mem::MemDriver;

    const ST: Replies = Replies { structured: true };

    /// The reply to `cmd`, appended to a buffer that already holds another reply.
    fn execute(
        node: &dyn BlockDriver,
        cmd: Command,
        payload: &mut [u8],
        replies: Replies,
        cookie: u64,
    ) -> Vec<u8> {
        let mut out = b"earlier reply".to_vec();
        super::execute(node, cmd, payload, replies, cookie, &mut out);
        assert_eq!(&out[..13], b"earlier reply");
        out.split_off(13)
    }

    #[test]
    fn read_returns_header_then_data() {
        let node = MemDriver::new((0..=255u8).cycle().take(4096).collect());
        let r = execute(
            &node,
            Command::Read {
                offset: 10,
                length: 5,
            },
            &mut [],
            ST,
            9,
        );
        assert_eq!(&r[28..], &[10, 11, 12, 13, 14]);
        let simple = Replies { structured: false };
        let r = execute(
            &node,
            Command::Read {
                offset: 0,
                length: 2,
            },
            &mut [],
            simple,
            9,
        );
        assert_eq!(r, [simple_reply(9, 0).as_slice(), &[0, 1]].concat());
        let r = execute(
            &node,
            Command::Read {
                offset: 0,
                length: 0,
            },
            &mut [],
            ST,
            9,
        );
        assert_eq!(r, none_chunk(9).to_vec());
    }

    #[test]
    fn write_then_zeroes_change_the_node() {
        let node = MemDriver::new(vec![7u8; 4096]);
        let w = Command::Write {
            offset: 100,
            length: 3,
            fua: true,
        };
        assert_eq!(
            execute(&node, w, &mut [1, 2, 3], ST, 1),
            none_chunk(1).to_vec()
        );
        let z = Command::WriteZeroes {
            offset: 0,
            length: 101,
            fua: false,
            no_hole: true,
            fast: false,
        };
        assert_eq!(execute(&node, z, &mut [], ST, 2), none_chunk(2).to_vec());
        let data = node.snapshot();
        assert!(data[..101].iter().all(|&b| b == 0));
        assert_eq!(&data[101..104], &[2, 3, 7]);
    }

    #[test]
    fn fast_zero_of_data_is_enotsup_and_changes_nothing() {
        let node = MemDriver::new(vec![7u8; 4096]);
        let z = Command::WriteZeroes {
            offset: 0,
            length: 512,
            fua: false,
            no_hole: false,
            fast: true,
        };
        let r = execute(&node, z, &mut [], ST, 5);
        // ERROR chunk with NBD_ENOTSUP (95).
        assert_eq!(&r[6..8], &[0x80, 0x01]);
        assert_eq!(&r[20..24], &95u32.to_be_bytes());
        assert!(node.snapshot().iter().all(|&b| b == 7));
    }

    #[test]
    fn errors_become_error_chunks() {
        let node = MemDriver::read_only(vec![0u8; 512]);
        let w = Command::Write {
            offset: 0,
            length: 1,
            fua: false,
        };
        let r = execute(&node, w, &mut [1], ST, 3);
        // ERROR chunk type 0x8001 and EPERM for a read-only node.
        assert_eq!(&r[6..8], &[0x80, 0x01]);
        assert_eq!(&r[20..24], &1u32.to_be_bytes());
    }

    #[test]
    fn a_failed_read_leaves_only_its_error_after_earlier_replies() {
        let node = MemDriver::new(vec![1u8; 512]);
        let rd = Command::Read {
            offset: 256,
            length: 512,
        };
        let r = execute(&node, rd, &mut [], ST, 6);
        // One ERROR chunk (EINVAL for a range past the end), no OFFSET_DATA header.
        assert_eq!(&r[6..8], &[0x80, 0x01]);
        assert_eq!(
            r.len(),
            20 + u32::from_be_bytes(r[16..20].try_into().unwrap()) as usize
        );
    }

    #[test]
    fn block_status_of_a_data_node_is_one_extent() {
        let node = MemDriver::new(vec![1u8; 8192]);
        let bs = Command::BlockStatus {
            offset: 512,
            length: 4096,
            req_one: false,
        };
        let r = execute(&node, bs, &mut [], ST, 4);
        assert_eq!(r, block_status_chunk(4, BASE_ALLOCATION_ID, &[(4096, 0)]));
    }
}
