//! `qemu-img map`: walk an image with [`map_extent`], merge neighbouring
//! extents that look alike, and print them as qemu-img does (JSON or the human table).
//!
//! Merging follows qemu-img: two entries merge when zero, data, compressed, depth,
//! present, file and "has an offset" agree and, with offsets, the second continues the
//! first on the host. The human table lists only data that is not known to be zero, and
//! refuses data without a host offset (encrypted or compressed clusters).
use super::image_arg::Access;
use super::{Env, Events, ImageArg};
use crate::driver::{Allocation, BlockDriver, map_extent};
use std::fmt::Write as _;
use std::sync::Arc;
use vmcrypt_error::{Result, bail};

/// What `vmcrypt map` was asked for.
#[derive(Clone, Debug, Default)]
pub struct MapRequest {
    pub image: ImageArg,
    /// First guest byte to map.
    pub start: u64,
    /// Map at most this many bytes.
    pub max_length: Option<u64>,
}

impl MapRequest {
    fn open(&self, env: &Env, events: &mut dyn Events) -> Result<Arc<dyn BlockDriver>> {
        self.image.open(env, Access::READ, events)
    }

    /// The map as qemu-img's JSON text (`--output=json`, with the final newline).
    pub fn json(&self, env: &Env, events: &mut dyn Events) -> Result<String> {
        map_json(
            self.open(env, events)?.as_ref(),
            self.start,
            self.max_length,
        )
    }

    /// The human table, written line by line to `out` (see [`map_human`]).
    pub fn human(
        &self,
        env: &Env,
        events: &mut dyn Events,
        out: &mut dyn std::io::Write,
    ) -> Result<TableEnd> {
        let node = self.open(env, events)?;
        map_human(node.as_ref(), self.start, self.max_length, out)
    }
}

/// Largest range asked for at once (qemu-img probes 1 GiB at a time).
const PROBE: u64 = 1 << 30;

/// Message of the human format for data it cannot place in a file.
pub const NO_OFFSET_MSG: &str = "File contains external, encrypted or compressed clusters.";

/// How the human table ended. Errors (the image cannot be opened or read) are `Err`;
/// data the table cannot show is not an error of the image but of the output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableEnd {
    /// Every entry was written.
    Complete,
    /// Stopped at data without a host offset (encrypted or compressed clusters):
    /// [`NO_OFFSET_MSG`]; qemu-img then exits with 1.
    NoHostOffset,
}

/// One line of the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub depth: u32,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    /// Host offset, when the bytes lie contiguously in `filename`.
    pub offset: Option<u64>,
    pub filename: Option<String>,
}

impl MapEntry {
    /// Whether `next` can be appended to `self`.
    fn mergeable(&self, next: &MapEntry) -> bool {
        self.length > 0
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.depth == next.depth
            && self.present == next.present
            && self.filename == next.filename
            && self.offset.is_some() == next.offset.is_some()
            && self
                .offset
                .zip(next.offset)
                .is_none_or(|(a, b)| a + self.length == b)
    }

    /// The entry as one qemu-img JSON object.
    pub fn json(&self) -> String {
        let mut s = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
            self.start,
            self.length,
            self.depth,
            self.present,
            self.zero,
            self.data,
            self.compressed
        );
        if let Some(o) = self.offset {
            let _ = write!(s, ", \"offset\": {o}");
        }
        s.push('}');
        s
    }
}

/// The entry of the range at `offset` (at most `len` bytes).
fn entry_at(node: &dyn BlockDriver, offset: u64, len: u64) -> Result<MapEntry> {
    let e = map_extent(node, offset, len)?;
    if e.length == 0 || e.length > len {
        bail!(
            Corrupt,
            "'{}': block status at {offset} returned a length of {} (asked for {len})",
            node.filename(),
            e.length
        );
    }
    Ok(MapEntry {
        start: offset,
        length: e.length,
        depth: e.depth,
        present: e.present,
        zero: e.allocation == Allocation::Zero,
        data: e.allocation == Allocation::Data,
        compressed: e.compressed,
        offset: e.host.as_ref().map(|h| h.offset),
        filename: e.host.map(|h| h.file),
    })
}

/// Walk `[start, start + max_length)` (clamped to the image) and hand every merged entry
/// to `emit` together with the entry that follows it (which `emit` may adjust before it
/// is merged further, as the human format does).
pub fn walk(
    node: &dyn BlockDriver,
    start: u64,
    max_length: Option<u64>,
    mut emit: impl FnMut(&MapEntry, Option<&mut MapEntry>) -> Result<()>,
) -> Result<()> {
    let size = node.size();
    let end = max_length.map_or(size, |m| start.saturating_add(m).min(size));
    let mut curr = MapEntry {
        start,
        length: 0,
        depth: 0,
        present: false,
        zero: false,
        data: false,
        compressed: false,
        offset: None,
        filename: None,
    };
    while curr.start + curr.length < end {
        let at = curr.start + curr.length;
        let mut next = entry_at(node, at, PROBE.min(end - at))?;
        if curr.mergeable(&next) {
            curr.length += next.length;
            continue;
        }
        if curr.length > 0 {
            emit(&curr, Some(&mut next))?;
        }
        curr = next;
    }
    emit(&curr, None)
}

/// The whole map as qemu-img's JSON text (with the final newline).
pub fn map_json(node: &dyn BlockDriver, start: u64, max_length: Option<u64>) -> Result<String> {
    let mut out = String::from("[");
    walk(node, start, max_length, |e, next| {
        out += &e.json();
        if next.is_some() {
            out += ",\n";
        }
        Ok(())
    })?;
    out += "]\n";
    Ok(out)
}

/// QEMU's `%#x`: "0" for zero, else 0x-prefixed hex.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// The human table, written line by line to `out`. Stops with
/// [`TableEnd::NoHostOffset`] at the first data entry without a host offset (after
/// writing the lines before it).
pub fn map_human(
    node: &dyn BlockDriver,
    start: u64,
    max_length: Option<u64>,
    out: &mut dyn std::io::Write,
) -> Result<TableEnd> {
    let mut no_offset = false;
    let r = table(node, start, max_length, out, &mut no_offset);
    match r {
        Err(_) if no_offset => Ok(TableEnd::NoHostOffset),
        r => r.map(|()| TableEnd::Complete),
    }
}

/// [`map_human`]'s walk; sets `no_offset` when it stops at data without a host offset.
fn table(
    node: &dyn BlockDriver,
    start: u64,
    max_length: Option<u64>,
    out: &mut dyn std::io::Write,
    no_offset: &mut bool,
) -> Result<()> {
    let io = |e: std::io::Error| vmcrypt_error::Error::io(e, "writing the map");
    writeln!(
        out,
        "{:<16}{:<16}{:<16}File",
        "Offset", "Length", "Mapped to"
    )
    .map_err(io)?;
    walk(node, start, max_length, |e, next| {
        if e.data && e.offset.is_none() {
            *no_offset = true;
            bail!(Unsupported, "{NO_OFFSET_MSG}");
        }
        if e.data && !e.zero {
            writeln!(
                out,
                "{:<16}{:<16}{:<16}{}",
                hex(e.start),
                hex(e.length),
                hex(e.offset.unwrap_or(0)),
                e.filename.as_deref().unwrap_or_default()
            )
            .map_err(io)?;
        }
        // The table does not tell zero from data-and-zero: let such entries merge.
        if let Some(n) = next
            && (!n.data || n.zero)
            && (!e.data || e.zero)
        {
            n.data = false;
            n.zero = true;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NoEvents;

    #[test]
    fn map_job_renders_both_shapes() {
        let sc = crate::jobs::testutil::Scratch::new();
        let name = sc.raw("img", &[1u8; 65536]);
        let mut req = MapRequest {
            image: ImageArg::file(&name, Some("raw")),
            start: 0,
            max_length: None,
        };
        let json = req.json(&Env::default(), &mut NoEvents).unwrap();
        assert!(json.starts_with("[{ \"start\": 0, \"length\": 65536, \"depth\": 0"));
        assert!(json.contains("\"data\": true"));
        assert!(json.ends_with("}]\n"));
        req.start = 4096;
        req.max_length = Some(4096);
        let mut out = Vec::new();
        let end = req.human(&Env::default(), &mut NoEvents, &mut out).unwrap();
        assert_eq!(end, TableEnd::Complete);
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().nth(1).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, ["0x1000", "0x1000", "0x1000", name.as_str()]);
    }
}
