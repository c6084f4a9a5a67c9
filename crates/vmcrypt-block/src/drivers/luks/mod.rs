//! The `luks` format driver: decrypts on read and encrypts on write, for LUKS1 and LUKS2.
//!
//! A luks node has a `file` child holding the payload and an optional `header` child
//! (a detached LUKS header). Guest offset `g` lives at `data_offset + g` in `file` and is
//! encrypted in sectors of the segment's sector size (512 for LUKS1, 512..4096 for LUKS2)
//! with IV sector `iv_tweak + g / 512` (IVs count 512-byte units even for 4096-byte
//! sectors). Unaligned requests are read-modify-write on whole sectors. Large requests
//! are split over rayon's thread pool.
//!
//! Opened without a passphrase, the node serves metadata only (for `info`, `dump`).
//!
//! How the data is encrypted lives behind the node's request lock ([`RequestLock`]):
//! the data cipher of the plain path, or none while a LUKS2 reencryption run serves
//! the requests through both keys ([`v2::reencrypt::online`]). Each request holds the
//! lock from its start to its end, so the switches (a run started while serving, a
//! finished run handing the node over to the new key) happen between requests.
//!
//! The header the node describes (`header()`, `luks2()`, the `info` block, `check`)
//! follows the device across those switches: each re-reads the header it wrote and
//! swaps it in whole ([`HeaderView`]), so the live node describes what a fresh open
//! would. The data path never reads it.
//!
//! A node's size does not change while it is served (only `resize` changes it): the
//! data layout is fixed at open, and a reencryption's data size must be a multiple of
//! both sector sizes (checked when a run starts and whenever one is loaded), so
//! rounding it to the old, the larger or the new sector size gives the same size
//! before a run, during it and after its finish. `info` reports that size.
//!
//! The LUKS API is version-blind: [`Volume`] opens either header and dispatches to
//! [`v1`] and [`v2`]; [`params`] holds the one set of parameter types both use.
pub mod convert;
pub(crate) mod embedded;
mod fresh;
mod header_view;
mod online_start;
pub(crate) mod params;
pub(crate) mod v1;
pub mod v2;
mod volume;

use crate::driver::{BlockDriver, Check, Child, Introspect, check_range};
use rayon::prelude::*;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use v2::reencrypt::online::{Admitted, Online};
use vmcrypt_crypto::argon::KdfLimits;
use vmcrypt_crypto::{CipherSpec, SectorCipher};
use vmcrypt_error::{Error, Result, bail, ensure};
use vmcrypt_format::luks2::{CopyState, SegmentSize};

pub(crate) use fresh::validate_uuid;
pub use header_view::HeaderRef;
pub(crate) use header_view::HeaderView;
pub use params::{
    ChangeReport, CreateParams, KdfKind, KeyslotParams, KillReport, Unlocked, Version,
};
pub use v1::Luks1Volume;
pub use v2::Luks2Volume;
pub use volume::{LAST_SLOT, Volume, backup_version, probe_version};

/// IV sectors are always 512 bytes.
pub const SECTOR: u64 = 512;

/// Whether `n` is a data sector size the driver can serve (and dm-crypt accepts): a
/// power of two from 512 to 4096. The LUKS2 metadata validator (as cryptsetup's)
/// accepts any multiple of 512, so a header may load that cannot be served.
pub(crate) fn is_data_sector_size(n: u32) -> bool {
    n.is_power_of_two() && (512..=4096).contains(&n)
}

/// Refuse a `what` (a segment) whose sector size cannot be served.
pub(crate) fn check_data_sector_size(what: &str, n: u32) -> Result<()> {
    ensure!(
        is_data_sector_size(n),
        Unsupported,
        "{what} has sector size {n}: data sectors must be 512, 1024, 2048 or 4096 bytes"
    );
    Ok(())
}
/// Requests at least this large are encrypted on several threads.
const PARALLEL_MIN: usize = 256 * 1024;
/// Largest buffer encrypted in one piece on the copying write path.
const WRITE_CHUNK: usize = 4 << 20;
/// Scratch buffers a node keeps for the copying write path.
const SCRATCH_KEEP: usize = 4;

/// A byte offset in the decrypted (guest) address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestOffset(pub u64);

/// A byte offset in the `file` child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostOffset(pub u64);

/// Where the data lives and how it is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DataLayout {
    offset: u64,
    /// Fixed segment size, or `None` for "up to the end of the file".
    size: Option<u64>,
    /// The data sector size at open (while a reencryption serves the node, its
    /// layout decides: [`LuksDriver::sector_size`]).
    sector: u64,
    iv_tweak: u64,
    /// LUKS1 as QEMU serves it: a last partial sector of the file counts as a whole one
    /// (QEMU's block layer rounds every file length up to 512 bytes, so `qemu-img info`
    /// reports round_up(file, 512) - payload offset); the missing bytes read as zeros
    /// before decryption and a write of that sector extends the file. LUKS2 (which QEMU
    /// does not serve) rounds down, as dm-crypt sees the device.
    round_up_file: bool,
}

/// An open LUKS node.
pub struct LuksDriver {
    file: Arc<dyn BlockDriver>,
    header_node: Option<Arc<dyn BlockDriver>>,
    /// The header as it is on the device: read at open, replaced whole by the online
    /// transitions the node makes itself ([`HeaderView`]).
    header: Arc<HeaderView>,
    /// Where the data is, fixed at open: a node serves one size for as long as it is
    /// open, whatever transitions its header goes through.
    layout: DataLayout,
    /// Opened with its key (it never loses it).
    keyed: bool,
    /// The slot the passphrase opened (during a reencryption, the old key's).
    unlocked_slot: Option<u32>,
    /// Unknown LUKS2 requirements: data is readable, nothing may be written.
    read_only_reason: Option<String>,
    /// The request lock and the plain path's data cipher ([`RequestLock`]).
    rmw: RequestLock,
    /// Set when the LUKS2 header is in reencryption (at open, or when a reencryption
    /// is started while serving): until its run has finished, requests go to the old
    /// or new encryption by the moving hotzone (see [`v2::reencrypt::online`]). Never
    /// unset: it keeps the finished run's status.
    online: OnceLock<Arc<Online>>,
    /// Serialises starts of a reencryption while serving.
    starting: Mutex<()>,
    /// Reusable scratch buffers for [`BlockDriver::write_at`] (which must not touch the
    /// caller's buffer), so a write neither allocates nor zeroes one.
    scratch: Mutex<Vec<Vec<u8>>>,
}

impl LuksDriver {
    /// Open a LUKS node. Without `passphrase`, only metadata is available.
    pub fn open(
        file: Arc<dyn BlockDriver>,
        header_node: Option<Arc<dyn BlockDriver>>,
        passphrase: Option<&[u8]>,
        slot: Option<u32>,
        limits: &KdfLimits,
    ) -> Result<Self> {
        let hdev = header_node.clone().unwrap_or_else(|| file.clone());
        let detached = header_node.is_some();
        let header = Volume::open(hdev.clone(), detached, limits)?;
        let online = OnceLock::new();
        let rmw: RequestLock = Arc::new(RwLock::new(None));
        if let Some(v) = header.v2() {
            ensure!(
                v.encrypt_state()?.is_none(),
                Unsupported,
                "an encryption in place is in progress on this image: finish it with \
                 vmcrypt luks reencrypt --resume-only (or cryptsetup reencrypt --resume-only)"
            );
        }
        let in_reencryption = match header.v2() {
            Some(v) => v.reencrypt_state()?.is_some(),
            None => false,
        };
        let view = HeaderView::new(header, hdev, detached, limits);
        if in_reencryption && let Some(p) = passphrase {
            if let Some(o) = Online::open(view.clone(), file.clone(), p, rmw.clone())? {
                let _ = online.set(o);
            }
            // Recovering an interrupted hotzone rewrote the header.
            view.install(view.read()?);
        }
        let header = view.get();
        let (mut layout, mut read_only_reason) = data_layout(&header, detached)?;
        let unlocked_slot = match (passphrase, online.get()) {
            (None, _) => None,
            (Some(_), Some(o)) => {
                let l = o.layout();
                (layout.offset, layout.size, layout.sector) = (l.offset, l.size, l.sector);
                read_only_reason = None;
                Some(o.old_slot())
            }
            (Some(p), None) => {
                let (c, s) = header.data_cipher(p, slot)?;
                let dc = DataCrypt::new(Arc::new(c), layout.iv_tweak, layout.sector as usize);
                *rmw.write().expect("rmw lock") = Some(dc);
                Some(s)
            }
        };
        Ok(LuksDriver {
            file,
            header_node,
            header: view,
            layout,
            keyed: passphrase.is_some(),
            unlocked_slot,
            read_only_reason,
            online,
            starting: Mutex::new(()),
            rmw,
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// The header, either version, as it is on the device now: after an online
    /// reencryption started here or finished here, the header that transition wrote
    /// (see [`HeaderView`]). A snapshot: a later transition does not change it.
    pub fn header(&self) -> Arc<Volume> {
        self.header.get()
    }

    /// The LUKS1 header, if this is LUKS1 (a snapshot, as [`Self::header`]).
    pub fn luks1(&self) -> Option<HeaderRef<Luks1Volume>> {
        header_view::luks1_of(self.header())
    }

    /// The LUKS2 header, if this is LUKS2 (a snapshot, as [`Self::header`]).
    pub fn luks2(&self) -> Option<HeaderRef<Luks2Volume>> {
        header_view::luks2_of(self.header())
    }

    /// The slot the passphrase opened. While a LUKS2 reencryption serves the node,
    /// the one of the old key; once its run has finished, the one of the new key
    /// (the finish removed the old key's slots).
    pub fn unlocked_slot(&self) -> Option<u32> {
        match self.online.get() {
            Some(o) if o.finished() => Some(o.new_slot()),
            _ => self.unlocked_slot,
        }
    }

    /// Whether requests go through a LUKS2 reencryption run (both keys held): false
    /// without one and once its run has finished and handed the node over to the plain
    /// path under the new key.
    pub fn serves_reencryption(&self) -> bool {
        self.online.get().is_some_and(|o| !o.finished())
    }

    /// The sector size requests are aligned to (512 for LUKS1): the data sector size,
    /// or while a LUKS2 reencryption is served the larger of the old and the new one
    /// (the new one once the run has finished).
    pub fn sector_size(&self) -> u64 {
        self.request_sector()
    }

    /// See [`Self::sector_size`]. A reencryption started while serving may raise it
    /// (a new sector size); the switch happens under the exclusive request lock, so a
    /// request reads it only once it holds the lock, and keeps it while it does.
    fn request_sector(&self) -> u64 {
        self.online
            .get()
            .map_or(self.layout.sector, |o| o.layout().sector)
    }

    /// Whether a write of `len` bytes at `offset` covers whole request sectors (ask
    /// with the request lock held).
    fn aligned(&self, offset: u64, len: usize) -> bool {
        let ss = self.request_sector();
        offset.is_multiple_of(ss) && (len as u64).is_multiple_of(ss)
    }

    /// Where the data starts in the `file` child, in bytes.
    pub fn data_offset(&self) -> u64 {
        self.layout.offset
    }

    /// The data cipher (the new one while a reencryption serves the node), when the
    /// node was opened with its passphrase.
    pub fn data_spec(&self) -> Option<CipherSpec> {
        let plain = self.rmw.read().expect("rmw lock");
        match (plain.as_ref(), self.online.get()) {
            (Some(dc), _) => Some(*dc.cipher.spec()),
            (None, Some(o)) => Some(o.new_spec()),
            _ => None,
        }
    }

    /// The data cipher for a caller that moves the ciphertext itself (the rbd node's
    /// asynchronous path); `None` without a key, on a read-only header (unmet
    /// requirements) and while a reencryption run serves the node (two ciphers).
    pub(crate) fn data_crypt(&self) -> Option<DataCrypt> {
        if self.read_only_reason.is_some() {
            return None;
        }
        self.rmw.read().expect("rmw lock").clone()
    }

    fn host(&self, g: GuestOffset) -> HostOffset {
        HostOffset(self.layout.offset + g.0)
    }

    fn check_key(&self) -> Result<()> {
        ensure!(
            self.keyed,
            Usage,
            "'{}' is encrypted: give its passphrase with key-secret=ID and --object secret,id=ID,file=PATH",
            self.file.filename()
        );
        Ok(())
    }

    /// How a request for guest bytes `[g, g + len)` is encrypted, given the plain
    /// path's cipher read under the request lock (held until the request ends).
    fn route<'a>(&'a self, plain: Option<&'a DataCrypt>, g: u64, len: usize) -> Result<Route<'a>> {
        self.check_key()?;
        match (plain, self.online.get()) {
            (Some(dc), _) => Ok(Route::Plain(dc)),
            (None, Some(o)) => Ok(Route::Online(o.admit(g, len)?)),
            (None, None) => Err(Error::internal("a LUKS node with its key has no cipher")),
        }
    }

    /// Read and decrypt whole sectors starting at the sector-aligned `g`. Bytes past the
    /// end of the file (only in LUKS1's last partial sector) read as zeros.
    fn read_sectors(
        &self,
        plain: Option<&DataCrypt>,
        buf: &mut [u8],
        g: GuestOffset,
    ) -> Result<()> {
        let route = self.route(plain, g.0, buf.len())?;
        let host = self.host(g).0;
        let have = self.file.size().saturating_sub(host).min(buf.len() as u64) as usize;
        let (inside, past_end) = buf.split_at_mut(have);
        if !inside.is_empty() {
            self.file.read_at(inside, host)?;
        }
        past_end.fill(0);
        route.apply(buf, g.0, false)
    }

    /// Encrypt and write whole sectors starting at the sector-aligned `g`, copying
    /// `data` piecewise into a reused scratch buffer.
    fn write_sectors(&self, plain: Option<&DataCrypt>, data: &[u8], g: GuestOffset) -> Result<()> {
        let mut scratch = self.take_scratch();
        let mut result = Ok(());
        for (i, chunk) in data.chunks(WRITE_CHUNK).enumerate() {
            let off = GuestOffset(g.0 + (i * WRITE_CHUNK) as u64);
            scratch.clear();
            scratch.extend_from_slice(chunk);
            result = self.encrypt_and_write(plain, &mut scratch, off);
            if result.is_err() {
                break;
            }
        }
        if result.is_err() {
            // It may still hold plaintext.
            scratch.fill(0);
        }
        self.return_scratch(scratch);
        result
    }

    /// Encrypt whole sectors in place and write them at the sector-aligned `g` (a
    /// request admitted through a reencryption stays admitted until written).
    fn encrypt_and_write(
        &self,
        plain: Option<&DataCrypt>,
        buf: &mut [u8],
        g: GuestOffset,
    ) -> Result<()> {
        let route = self.route(plain, g.0, buf.len())?;
        route.apply(buf, g.0, true)?;
        self.file.write_at(buf, self.host(g).0)
    }

    fn take_scratch(&self) -> Vec<u8> {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        pool.pop().unwrap_or_default()
    }

    /// Keep `buf` (which holds ciphertext or zeros) for the next write.
    fn return_scratch(&self, buf: Vec<u8>) {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < SCRATCH_KEEP {
            pool.push(buf);
        }
    }

    /// Common checks of a write.
    fn check_write(&self, offset: u64, len: usize) -> Result<()> {
        if let Some(why) = &self.read_only_reason {
            bail!(ReadOnly, "'{}' is read-only: {why}", self.file.filename());
        }
        check_range("luks write", offset, len, self.size())?;
        self.check_key()
    }

    /// Read-modify-write of the partial head/tail sectors, serialised against every
    /// other write so that no writer to one sector can lose another's bytes.
    fn write_unaligned(&self, buf: &[u8], offset: u64) -> Result<()> {
        let guard = self.rmw.write().expect("rmw lock");
        let plain = guard.as_ref();
        let ss = self.request_sector();
        let start = offset / ss * ss;
        let end = (offset + buf.len() as u64).div_ceil(ss) * ss;
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_sectors(plain, &mut tmp[..ss as usize], GuestOffset(start))?;
        if end - start > ss {
            let last = tmp.len() - ss as usize;
            self.read_sectors(plain, &mut tmp[last..], GuestOffset(end - ss))?;
        }
        let skip = (offset - start) as usize;
        tmp[skip..skip + buf.len()].copy_from_slice(buf);
        self.encrypt_and_write(plain, &mut tmp, GuestOffset(start))
    }
}

/// Where the data of `header` lives, and why it is read-only (unmet LUKS2
/// requirements). Data inside the header area (a LUKS1 payload at offset 0, a LUKS2
/// data segment before the end of the keyslots) needs a detached header: the header
/// file alone serves `dump` and key-slot commands, not data.
fn data_layout(header: &Volume, detached: bool) -> Result<(DataLayout, Option<String>)> {
    let Some(v) = header.v2() else {
        let v = header.v1().expect("a LUKS1 or LUKS2 header");
        if !detached && v.payload_offset() == 0 {
            bail!(
                Corrupt,
                "LUKS payload is overlapping with the header (payload offset 0): this is a \
                 detached header; open its data with header.filename=THIS,file.filename=DATA"
            );
        }
        let layout = DataLayout {
            offset: v.payload_offset(),
            size: None,
            sector: SECTOR,
            iv_tweak: 0,
            round_up_file: true,
        };
        return Ok((layout, None));
    };
    let seg = v.header().metadata.default_segment()?;
    let meta_end = v.header().metadata.hdr_and_areas_size()?;
    if !detached && seg.offset < meta_end {
        bail!(
            Corrupt,
            "LUKS2 data segment at {} overlaps the header and keyslots ({meta_end} bytes): \
             this is a detached header; open its data with header.filename=THIS,file.filename=DATA",
            seg.offset
        );
    }
    check_data_sector_size(&format!("LUKS2 data segment {}", seg.id), seg.sector_size)?;
    let size = match seg.size {
        SegmentSize::Dynamic => None,
        SegmentSize::Bytes(n) => Some(n),
    };
    let req = v.requirements()?;
    let ro = req
        .read_only()
        .then(|| format!("unmet LUKS2 requirements: {}", req.mandatory.join(", ")));
    let layout = DataLayout {
        offset: seg.offset,
        size,
        sector: u64::from(seg.sector_size),
        iv_tweak: seg.iv_tweak,
        round_up_file: false,
    };
    Ok((layout, ro))
}

/// A node's request lock: held shared by each request from its start to its end
/// (reads, whole-sector writes) and exclusively by read-modify-writes (so one cannot
/// write back sector contents that another write replaced in the meantime) and by
/// every switch of how the data is encrypted (so no request straddles one). It holds
/// the plain path's data cipher: `None` without a key and while a LUKS2 reencryption
/// run serves the requests.
pub(crate) type RequestLock = Arc<RwLock<Option<DataCrypt>>>;

/// How one request is encrypted, chosen under the request lock.
enum Route<'a> {
    Plain(&'a DataCrypt),
    /// Through a reencryption run, admitted for the request's range.
    Online(Admitted<'a>),
}

impl Route<'_> {
    fn apply(&self, buf: &mut [u8], g: u64, encrypt: bool) -> Result<()> {
        match self {
            Route::Plain(dc) => dc.apply(buf, g, encrypt),
            Route::Online(a) => a.crypt(buf, g, encrypt),
        }
    }
}

/// A LUKS node's data cipher with its sector layout, detached from the node.
#[derive(Clone)]
pub(crate) struct DataCrypt {
    cipher: Arc<SectorCipher>,
    iv_tweak: u64,
    sector: usize,
}

impl DataCrypt {
    /// `cipher` over sectors of `sector` bytes whose IVs start at `iv_tweak`.
    pub(crate) fn new(cipher: Arc<SectorCipher>, iv_tweak: u64, sector: usize) -> Self {
        DataCrypt {
            cipher,
            iv_tweak,
            sector,
        }
    }

    /// Encrypt or decrypt whole sectors of `buf`, guest bytes from the aligned `offset`.
    pub(crate) fn apply(&self, buf: &mut [u8], offset: u64, encrypt: bool) -> Result<()> {
        let iv = self.iv_tweak.wrapping_add(offset / SECTOR);
        crypt(&self.cipher, iv, self.sector, buf, encrypt)
    }

    /// As [`DataCrypt::apply`], all on the calling thread whatever the size: for callers
    /// that already have many requests in flight (the asynchronous path), where those
    /// requests keep the cores busy and handing one request to rayon's pool costs more
    /// than it saves (its idle workers spin in `sched_yield` after each request,
    /// taking CPU from librbd and the OSDs: 14% of the server's samples measured with
    /// 1 MiB writes on 2 cores).
    pub(crate) fn apply_here(&self, buf: &mut [u8], offset: u64, encrypt: bool) -> Result<()> {
        let iv = self.iv_tweak.wrapping_add(offset / SECTOR);
        if encrypt {
            self.cipher.encrypt(iv, self.sector, buf)
        } else {
            self.cipher.decrypt(iv, self.sector, buf)
        }
    }
}

/// The number of cores, asked once (the std call reads cgroup files every time).
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Encrypt or decrypt `buf` (whole sectors of `sector` bytes, first IV sector `iv`), on
/// several threads when it is large.
pub(crate) fn crypt(
    cipher: &SectorCipher,
    iv: u64,
    sector: usize,
    buf: &mut [u8],
    encrypt: bool,
) -> Result<()> {
    let threads = cores();
    let run = |iv: u64, b: &mut [u8]| {
        if encrypt {
            cipher.encrypt(iv, sector, b)
        } else {
            cipher.decrypt(iv, sector, b)
        }
    };
    if threads < 2 || buf.len() < PARALLEL_MIN {
        return run(iv, buf);
    }
    // rayon's pool keeps its threads: spawning two per request cost more than it saved.
    let per = (buf.len() / sector).div_ceil(threads) * sector;
    buf.par_chunks_mut(per).enumerate().try_for_each(|(i, b)| {
        // IVs count 512-byte units whatever the sector size.
        run(iv.wrapping_add((i * per) as u64 / SECTOR), b)
    })
}

impl BlockDriver for LuksDriver {
    fn driver_name(&self) -> &'static str {
        "luks"
    }

    fn size(&self) -> u64 {
        let mut file = self.file.size();
        if self.layout.round_up_file {
            file = file.div_ceil(SECTOR).saturating_mul(SECTOR);
        }
        let avail = file.saturating_sub(self.layout.offset);
        let raw = self.layout.size.map_or(avail, |s| s.min(avail));
        let ss = self.request_sector();
        raw / ss * ss
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("luks read", offset, buf.len(), self.size())?;
        let plain = self.rmw.read().expect("rmw lock");
        let plain = plain.as_ref();
        let ss = self.request_sector();
        let start = offset / ss * ss;
        let end = (offset + buf.len() as u64).div_ceil(ss) * ss;
        if start == offset && end == offset + buf.len() as u64 {
            return self.read_sectors(plain, buf, GuestOffset(offset));
        }
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_sectors(plain, &mut tmp, GuestOffset(start))?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len())?;
        let shared = self.rmw.read().expect("rmw lock");
        if !self.aligned(offset, buf.len()) {
            drop(shared);
            return self.write_unaligned(buf, offset);
        }
        self.write_sectors(shared.as_ref(), buf, GuestOffset(offset))
    }

    /// Encrypts `buf` in place: no copy, no scratch buffer.
    fn write_at_mut(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let shared = self.rmw.read().expect("rmw lock");
        if !self.aligned(offset, buf.len()) {
            drop(shared);
            return self.write_unaligned(buf, offset);
        }
        self.encrypt_and_write(shared.as_ref(), buf, GuestOffset(offset))
    }

    fn flush(&self) -> Result<()> {
        self.file.flush()
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        if !new_size.is_multiple_of(self.request_sector()) {
            bail!(
                Usage,
                "luks: the new size {new_size} is not a multiple of the {}-byte sector size",
                self.request_sector()
            );
        }
        if self.serves_reencryption() {
            bail!(
                Unsupported,
                "luks: a LUKS2 reencryption is in progress; resize after it finished"
            );
        }
        if self.layout.size.is_some() {
            bail!(
                Unsupported,
                "luks: the LUKS2 data segment has a fixed size; it cannot be resized"
            );
        }
        self.file.resize(self.layout.offset + new_size)
    }

    fn is_read_only(&self) -> bool {
        self.file.is_read_only() || self.read_only_reason.is_some()
    }

    /// `header` first, then `file`, in the order qemu-img lists a detached LUKS image's
    /// children.
    fn children(&self) -> Vec<Child> {
        let mut v = Vec::new();
        if let Some(h) = &self.header_node {
            v.push(Child {
                role: "header",
                node: h.clone(),
            });
        }
        v.push(Child {
            role: "file",
            node: self.file.clone(),
        });
        v
    }

    fn filename(&self) -> String {
        self.file.filename()
    }

    fn as_check(&self) -> Option<&dyn Check> {
        Some(self)
    }

    fn as_introspect(&self) -> Option<&dyn Introspect> {
        Some(self)
    }

    fn as_reencryption(&self) -> Option<Arc<Online>> {
        self.online.get().cloned()
    }

    fn start_reencryption(
        &self,
        passphrase: &[u8],
        key_slot: Option<u32>,
        p: &v2::reencrypt::init::InitParams,
    ) -> Option<Result<Arc<Online>>> {
        Some(self.begin_reencryption(passphrase, key_slot, p))
    }
}

impl Introspect for LuksDriver {
    fn format_specific(&self) -> Option<serde_json::Value> {
        Some(self.header().info_json())
    }

    fn is_encrypted(&self) -> bool {
        true
    }
}

impl Check for LuksDriver {
    /// LUKS1 headers were validated at open. For LUKS2, a damaged or outdated header
    /// copy, or JSON that needed cryptsetup's repair, is reported (`vmcrypt luks repair`
    /// fixes it).
    fn check(&self) -> Vec<String> {
        let Some(v) = self.luks2() else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        let (p, s) = v.copy_states();
        for (name, state) in [("primary", p), ("secondary", s)] {
            match state {
                CopyState::Valid => {}
                CopyState::Outdated { seqid } => problems.push(format!(
                    "the {name} LUKS2 header copy is outdated (seqid {seqid})"
                )),
                CopyState::Invalid { reason } => {
                    problems.push(format!("the {name} LUKS2 header copy is invalid: {reason}"))
                }
            }
        }
        if v.json_needed_repair() {
            problems
                .push("the LUKS2 metadata needed cryptsetup's repair (stray KDF fields)".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmcrypt_crypto::CipherSpec;

    /// The one-thread path gives the bytes the parallel one gives, on a buffer large
    /// enough to be split (LUKS2 4096-byte sectors, IV tweak and offset not zero), and
    /// decrypts back to the plaintext.
    #[test]
    fn apply_here_matches_apply() {
        let spec = CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap();
        let key: Vec<u8> = (0..64u8).collect();
        let dc = DataCrypt {
            cipher: Arc::new(SectorCipher::new(&spec, &key).unwrap()),
            iv_tweak: 77,
            sector: 4096,
        };
        let plain: Vec<u8> = (0..PARALLEL_MIN * 4)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let (mut a, mut b) = (plain.clone(), plain.clone());
        dc.apply(&mut a, 1 << 20, true).unwrap();
        dc.apply_here(&mut b, 1 << 20, true).unwrap();
        assert_ne!(a, plain);
        assert_eq!(a, b);
        dc.apply_here(&mut b, 1 << 20, false).unwrap();
        assert_eq!(b, plain);
    }

    /// The fast path (`data_crypt`, rbd's asynchronous path) is off while a
    /// reencryption run serves the node and on once the run has finished and handed
    /// the node over, encrypting as a fresh open's does.
    #[test]
    fn finished_online_run_turns_the_fast_path_on() {
        use crate::drivers::mem::MemDriver;
        use v2::reencrypt::ResilienceChoice;
        use v2::reencrypt::init::{InitParams, NewEncryption};
        use vmcrypt_crypto::HashAlg;
        const PW: &[u8] = b"pw";
        let limits = KdfLimits::default();
        let mem = Arc::new(MemDriver::new(Vec::new()));
        let fast_kdf = KeyslotParams {
            kdf: KdfKind::Pbkdf2,
            iterations: Some(1000),
            ..Default::default()
        };
        let mut p = CreateParams::luks2(CipherSpec::from_luks2("aes-xts-plain64", 64).unwrap());
        p.keyslot = fast_kdf;
        p.data_offset = Some(1 << 20);
        p.keyslots_size = Some((1 << 20) - (32 << 10));
        Luks2Volume::create(mem.clone(), &p, PW).unwrap();
        mem.resize(2 << 20).unwrap();
        let d = LuksDriver::open(mem.clone(), None, Some(PW), None, &limits).unwrap();
        assert!(d.data_crypt().is_some(), "a plain node has the fast path");
        let init = InitParams {
            new: NewEncryption::default(),
            resilience: ResilienceChoice::Journal,
            hash: HashAlg::Sha256,
            keyslot: fast_kdf,
        };
        let online = d.begin_reencryption(PW, None, &init).unwrap();
        assert!(
            d.data_crypt().is_none(),
            "no fast path while the run serves"
        );
        online.start(Some(256 << 10)).unwrap();
        online.wait_stopped();
        assert_eq!(online.status().state.name(), "finished");
        let ours = d.data_crypt().expect("the fast path once handed over");
        let fresh = LuksDriver::open(mem, None, Some(PW), None, &limits).unwrap();
        let theirs = fresh.data_crypt().unwrap();
        let plain: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let (mut a, mut b) = (plain.clone(), plain.clone());
        ours.apply_here(&mut a, 4096, true).unwrap();
        theirs.apply_here(&mut b, 4096, true).unwrap();
        assert_ne!(a, plain);
        assert_eq!(a, b, "the handed-over node encrypts as a fresh open");
    }
}
