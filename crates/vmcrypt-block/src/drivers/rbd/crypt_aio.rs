//! The asynchronous path of an encrypted rbd node ([`AsyncIo`]): a write is encrypted
//! on the submitting thread and handed to librbd; a read's ciphertext is decrypted (and
//! its holes zeroed) in librbd's completion callback. A write's encryption stays on
//! its thread whatever its size (`DataCrypt::apply_here`): the requests in flight
//! together keep the cores busy.
//!
//! Only the common case goes this way: whole sectors, objects whose stored length is
//! known, no gap to fill before a write, no clone parent to read or copy up, no
//! reencryption in progress. Everything else is declined and runs on the blocking path,
//! which also learns the objects' lengths for later requests. A write records its
//! object lengths when it is submitted, not when it ends, so that a later write to the
//! same object, also while this one is in flight, finds no gap to fill with zeros over
//! it (what a failed write leaves is undefined in NBD anyway).
use super::{RbdCryptDriver, zero_holes};
use crate::driver::{AsyncIo, BlockDriver, Declined, IoDone, check_range};

impl RbdCryptDriver {
    /// The stored lengths of the objects under guest `[offset, offset+len)` if the
    /// request may go asynchronously (whole sectors, inside the node, lengths known).
    fn async_lengths(&self, offset: u64, len: usize) -> Option<Vec<(u64, u64)>> {
        if len == 0
            || check_range("rbd", offset, len, self.size()).is_err()
            || !self.aligned(offset, len as u64)
        {
            return None;
        }
        self.known_lengths(self.data_offset + offset, len as u64)
    }
}

impl AsyncIo for RbdCryptDriver {
    fn submit_read(
        &self,
        mut buf: Vec<u8>,
        start: usize,
        offset: u64,
        done: IoDone,
    ) -> std::result::Result<(), Declined> {
        let len = buf.len().saturating_sub(start);
        let lengths = self
            .async_lengths(offset, len)
            .filter(|l| !l.iter().any(|&(o, s)| self.reads_parent(o, s)));
        let (Some(lengths), Some(dc)) = (lengths, self.luks.data_crypt()) else {
            return Err(Declined { buf, done });
        };
        if lengths.iter().all(|&(_, l)| l == 0) {
            buf[start..].fill(0);
            done(Ok(()), buf);
            return Ok(());
        }
        let (host, object_size) = (self.data_offset + offset, self.object_size);
        let decrypt: IoDone = Box::new(move |r, mut buf| {
            let data = &mut buf[start..];
            let r = r.and_then(|()| dc.apply(data, offset, false));
            zero_holes(data, host, &lengths, object_size);
            done(r, buf)
        });
        self.raw.image().submit_read(buf, start, host, decrypt);
        Ok(())
    }

    fn submit_write(
        &self,
        mut buf: Vec<u8>,
        offset: u64,
        done: IoDone,
    ) -> std::result::Result<(), Declined> {
        let dc = self
            .luks
            .data_crypt()
            .filter(|_| !self.is_read_only() && !self.raw.holds_header_lock());
        // Shared with other whole-sector writes, exclusive of read-modify-writes and
        // gap fills, from the look at the lengths until the request is submitted.
        let guard = self.rmw.read().expect("rmw lock");
        let host = self.data_offset + offset;
        let lengths = self.async_lengths(offset, buf.len()).filter(|l| {
            !l.iter().any(|&(o, s)| self.needs_copy_up(o, s)) && self.gap_before(host, l).is_none()
        });
        let (Some(_), Some(dc)) = (lengths, dc) else {
            return Err(Declined { buf, done });
        };
        if let Err(e) = dc.apply_here(&mut buf, offset, true) {
            done(Err(e), buf);
            return Ok(());
        }
        self.wrote(host, buf.len() as u64);
        self.raw.image().submit_write(buf, 0, host, done);
        drop(guard);
        Ok(())
    }

    fn submit_flush(&self, done: IoDone) -> std::result::Result<(), Declined> {
        self.raw.submit_flush(done)
    }
}
