//! `qemu-img compare`: whether two images read the same.
//!
//! Both images are walked with [`map_extent`] (the status through the
//! backing chain): ranges that are zero in both are skipped, ranges allocated in both
//! are read and compared, and where only one side is allocated that side must read as
//! zeros. When the sizes differ, the extra part of the larger image must read as zeros
//! (strict mode refuses the size difference outright). Mismatches are reported at the
//! first differing 512-byte sector, as qemu-img does.
use super::image_arg::Access;
use super::{Env, Events, ImageArg};
use crate::driver::{Allocation, BlockDriver, MapExtent, map_extent};
use vmcrypt_error::{Result, ResultExt};

/// What `vmcrypt compare` was asked for.
#[derive(Clone, Debug, Default)]
pub struct CompareRequest {
    pub first: ImageArg,
    pub second: ImageArg,
    /// `-s`: sizes and allocation must match too.
    pub strict: bool,
}

/// The verdict with what qemu-img prints for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompareReport {
    pub outcome: Outcome,
    /// The sizes differ.
    pub size_mismatch: bool,
    pub strict: bool,
}

impl CompareReport {
    /// qemu-img's lines on stdout, in order.
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.size_mismatch && !self.strict {
            v.push("Warning: Image size mismatch!".to_string());
        }
        v.push(match self.outcome {
            Outcome::Identical => "Images are identical.".into(),
            Outcome::Mismatch(at) => format!("Content mismatch at offset {at}!"),
            Outcome::SizeMismatch => "Strict mode: Image size mismatch!".into(),
            Outcome::StatusMismatch(at) => {
                format!("Strict mode: Offset {at} block status mismatch!")
            }
        });
        v
    }

    /// qemu-img compare's exit status: 0 identical, 1 different (2 is an error).
    pub fn exit_code(&self) -> u8 {
        u8::from(self.outcome != Outcome::Identical)
    }
}

/// Open both images of `req` read-only and compare them.
pub fn run(req: &CompareRequest, env: &Env, events: &mut dyn Events) -> Result<CompareReport> {
    let first = req.first.open(env, Access::READ, events)?;
    let second = req.second.open(env, Access::READ, events)?;
    let (outcome, report) = compare(first.as_ref(), second.as_ref(), req.strict)?;
    Ok(CompareReport {
        outcome,
        size_mismatch: report.size_mismatch,
        strict: req.strict,
    })
}

/// Bytes read per request.
const CHUNK: u64 = 2 << 20;
/// Granularity of the mismatch offset.
const SECTOR: usize = 512;

/// The verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Identical,
    /// Content differs at this guest offset.
    Mismatch(u64),
    /// Strict mode: the sizes differ.
    SizeMismatch,
    /// Strict mode: the allocation differs at this offset.
    StatusMismatch(u64),
}

/// What the caller is told while comparing.
#[derive(Default)]
pub struct Report {
    /// The sizes differ (qemu-img's "Warning: Image size mismatch!").
    pub size_mismatch: bool,
}

/// Compare images `a` and `b`. `strict` also requires equal sizes and allocation.
pub fn compare(
    a: &dyn BlockDriver,
    b: &dyn BlockDriver,
    strict: bool,
) -> Result<(Outcome, Report)> {
    let (sa, sb) = (a.size(), b.size());
    let mut report = Report {
        size_mismatch: sa != sb,
    };
    if strict && sa != sb {
        return Ok((Outcome::SizeMismatch, report));
    }
    let common = sa.min(sb);
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    let mut off = 0;
    while off < common {
        let ea = status(a, off, common - off)?;
        let eb = status(b, off, common - off)?;
        let mut chunk = ea.length.min(eb.length);
        if strict && status_flags(&ea, common) != status_flags(&eb, common) {
            return Ok((Outcome::StatusMismatch(off), report));
        }
        let (za, zb) = (is_zero(&ea), is_zero(&eb));
        if !(za && zb) {
            chunk = chunk.min(CHUNK);
            let n = chunk as usize;
            let found = if ea.present == eb.present {
                read(a, &mut buf_a[..n], off, "first")?;
                read(b, &mut buf_b[..n], off, "second")?;
                first_diff(&buf_a[..n], &buf_b[..n])
            } else {
                let (node, which) = if ea.present {
                    (a, "first")
                } else {
                    (b, "second")
                };
                read(node, &mut buf_a[..n], off, which)?;
                first_nonzero(&buf_a[..n])
            };
            if let Some(i) = found {
                return Ok((Outcome::Mismatch(off + i), report));
            }
        }
        off += chunk;
    }
    if sa != sb {
        let (big, which) = if sa > sb { (a, "first") } else { (b, "second") };
        if let Some(at) = extra_nonzero(big, common, which, &mut buf_a)? {
            return Ok((Outcome::Mismatch(at), report));
        }
    }
    report.size_mismatch = sa != sb;
    Ok((Outcome::Identical, report))
}

fn status(node: &dyn BlockDriver, off: u64, len: u64) -> Result<MapExtent> {
    map_extent(node, off, len)
        .with_ctx(|| format!("block status of '{}' at offset {off}", node.filename()))
}

/// What qemu-img's strict mode compares: allocation, whether some layer allocates the
/// range, whether it has a host offset, compression, and whether it reaches `end`.
fn status_flags(e: &MapExtent, end: u64) -> (Allocation, bool, bool, bool, bool) {
    (
        e.allocation,
        e.present,
        e.host.is_some(),
        e.compressed,
        e.offset + e.length == end,
    )
}

fn is_zero(e: &MapExtent) -> bool {
    e.allocation == Allocation::Zero
}

fn read(node: &dyn BlockDriver, buf: &mut [u8], off: u64, which: &str) -> Result<()> {
    node.read_at(buf, off).with_ctx(|| {
        format!(
            "reading offset {off} of the {which} image '{}'",
            node.filename()
        )
    })
}

/// The part of `big` past `from`: the offset of its first non-zero sector, if any.
fn extra_nonzero(
    big: &dyn BlockDriver,
    from: u64,
    which: &str,
    buf: &mut [u8],
) -> Result<Option<u64>> {
    let size = big.size();
    let mut off = from;
    while off < size {
        let e = status(big, off, size - off)?;
        let mut chunk = e.length;
        if e.present && !is_zero(&e) {
            chunk = chunk.min(CHUNK);
            let n = chunk as usize;
            read(big, &mut buf[..n], off, which)?;
            if let Some(i) = first_nonzero(&buf[..n]) {
                return Ok(Some(off + i));
            }
        }
        off += chunk;
    }
    Ok(None)
}

/// Offset of the first 512-byte sector where `a` and `b` differ.
fn first_diff(a: &[u8], b: &[u8]) -> Option<u64> {
    a.chunks(SECTOR)
        .zip(b.chunks(SECTOR))
        .position(|(x, y)| x != y)
        .map(|i| (i * SECTOR) as u64)
}

/// Offset of the first 512-byte sector of `a` that is not all zeros.
fn first_nonzero(a: &[u8]) -> Option<u64> {
    a.chunks(SECTOR)
        .position(|s| s.iter().any(|&x| x != 0))
        .map(|i| (i * SECTOR) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::mem::MemDriver;

    #[test]
    fn compare_job_reports_like_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, [0u8; 8192]).unwrap();
        let mut data = [0u8; 16384];
        data[4096] = 1;
        std::fs::write(&b, data).unwrap();
        let arg = |p: &std::path::Path| ImageArg::file(&p.display().to_string(), Some("raw"));
        let mut req = CompareRequest {
            first: arg(&a),
            second: arg(&b),
            strict: false,
        };
        let r = run(&req, &Env::default(), &mut crate::jobs::NoEvents).unwrap();
        assert_eq!(
            r.lines(),
            [
                "Warning: Image size mismatch!",
                "Content mismatch at offset 4096!"
            ]
        );
        assert_eq!(r.exit_code(), 1);
        req.second = arg(&a);
        let r = run(&req, &Env::default(), &mut crate::jobs::NoEvents).unwrap();
        assert_eq!(
            (r.lines(), r.exit_code()),
            (vec!["Images are identical.".into()], 0)
        );
        req.second = arg(&b);
        req.strict = true;
        let r = run(&req, &Env::default(), &mut crate::jobs::NoEvents).unwrap();
        assert_eq!(r.lines(), ["Strict mode: Image size mismatch!"]);
    }

    fn mem(size: usize, writes: &[(u64, u8)]) -> MemDriver {
        let m = MemDriver::new(vec![0u8; size]);
        for &(off, v) in writes {
            m.write_at(&[v], off).unwrap();
        }
        m
    }

    #[test]
    fn identical_and_mismatch_sector() {
        let a = mem(1 << 20, &[(5000, 1)]);
        let b = mem(1 << 20, &[(5000, 1)]);
        assert_eq!(compare(&a, &b, false).unwrap().0, Outcome::Identical);
        let c = mem(1 << 20, &[(5000, 1), (700_001, 9)]);
        assert_eq!(
            compare(&a, &c, false).unwrap().0,
            Outcome::Mismatch(700_001 / 512 * 512)
        );
    }

    #[test]
    fn sizes() {
        let a = mem(1 << 20, &[(5, 1)]);
        let b = mem(2 << 20, &[(5, 1)]);
        let (o, r) = compare(&a, &b, false).unwrap();
        assert_eq!(o, Outcome::Identical);
        assert!(r.size_mismatch);
        assert_eq!(compare(&a, &b, true).unwrap().0, Outcome::SizeMismatch);
        let c = mem(2 << 20, &[(5, 1), ((1 << 20) + 1025, 3)]);
        assert_eq!(
            compare(&c, &a, false).unwrap().0,
            Outcome::Mismatch((1 << 20) + 1024)
        );
    }
}
