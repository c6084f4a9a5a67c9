//! Online reencryption: a LUKS2 image in reencryption state served while it is
//! reencrypted, by the process that serves it.
//!
//! [`Online`] is the shared state of one image: both ciphers, the offset below which
//! the data is in the new encryption (`done`), the hotzone being rewritten, and the
//! requests in flight. Each request of the LUKS driver is admitted for its range: it
//! waits while its range overlaps the hotzone, then is counted in flight and uses the
//! new cipher below `done` and the old one above. The background run (one thread, the
//! same [`Reencryption`] as offline, told through [`HotzoneGate`]) marks the hotzone,
//! waits for the requests in flight that touch it, rewrites it with the usual
//! crash-safe writes and moves `done`. Requests elsewhere never wait.
//!
//! The segments may have different sector sizes (a new `--sector-size`, started offline
//! with `--init-only` or while serving): requests are then aligned to the larger one
//! ([`OnlineLayout::sector`]; the LUKS driver read-modify-writes smaller writes on it
//! under its exclusive request lock), and `done` moves by whole hotzones, which are
//! multiples of it, so a request's part on either side is whole sectors of its segment.
//!
//! A finished run hands the node over: after the final header write, with the node's
//! request lock held exclusively (so no request is in flight), the new segment's cipher
//! becomes the node's data cipher ([`RequestLock`]) and the run lets its keys go (both
//! volume keys and the old segment's cipher, zeroized as they drop). From then on the
//! node serves as a fresh open would: the plain path, the fast path of
//! `LuksDriver::data_crypt`, the new key slot in the status.
//!
//! The node's header view ([`HeaderView`]) follows the header on the device across
//! these transitions: the hand-over re-reads the header the finish wrote (before it
//! takes the request lock, so the switch does no I/O) and swaps it in with the new
//! cipher, as a start while serving does with the header it wrote; `header()`,
//! `info` and `check` of the live node then describe what a fresh open would. If the
//! re-read fails, the node still serves (the cipher does not depend on it), keeps the
//! header it had, and the status says so ([`OnlineStatus::header_error`]). The node's
//! size never changes across a run (see the LUKS driver's module doc).
//!
//! The on-disk metadata is the state: a server restarted after a kill opens the image
//! in reencryption state again, recovers an interrupted hotzone before serving, and
//! resumes when told to (or `vmcrypt luks reencrypt --resume-only` finishes offline).
use super::{HotzoneGate, Reencryption};
use crate::driver::BlockDriver;
use crate::drivers::luks::{DataCrypt, HeaderView, RequestLock, Volume};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use vmcrypt_crypto::{CipherSpec, SecretBytes, SectorCipher};
use vmcrypt_error::{Error, Result, ResultExt, bail};
use vmcrypt_format::luks2::{Segment, SegmentSize};

/// Default hotzone online: small, since requests touching it wait for all of it.
pub const ONLINE_HOTZONE: u64 = 1 << 20;

/// What the background run is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// The image is not in reencryption state (one can be started with `init`).
    Absent,
    /// Not started by this process (the reencryption is waiting for a resume).
    Idle,
    Running,
    /// Stopped cleanly between hotzones.
    Paused,
    Finished,
    /// The run stopped on an error (the message).
    Failed(String),
}

impl RunState {
    pub fn name(&self) -> &'static str {
        match self {
            RunState::Absent => "none",
            RunState::Idle => "idle",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Finished => "finished",
            RunState::Failed(_) => "failed",
        }
    }
}

/// A snapshot for status lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnlineStatus {
    pub state: RunState,
    pub done: u64,
    pub total: u64,
    pub hotzones: u64,
    /// Longest hotzone (from marking it to moving `done`).
    pub hotzone_max: Duration,
    /// Longest request of the data path (admission wait included).
    pub request_max: Duration,
    /// The encryption the run moves the data to (`None` without a run).
    pub target: Option<TargetEncryption>,
    /// Whether the old volume key is still in memory: until the run has finished and
    /// handed the node over to the new key (read from whether the run's keys exist).
    pub old_key_held: bool,
    /// Why the node's header view could not follow the header on the device after a
    /// transition (the re-read failed): the node serves on, but `info` and `check`
    /// describe the header from before it until the image is opened again.
    pub header_error: Option<String>,
}

/// The new segment's encryption as `luks status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetEncryption {
    /// cryptsetup's cipher string, e.g. "aes-xts-plain64".
    pub cipher: String,
    pub key_bits: u32,
    pub sector_size: u32,
    /// The key slot the passphrase opened the new volume key with (`None` from a
    /// server that does not say).
    pub key_slot: Option<u32>,
}

impl OnlineStatus {
    /// The status of an image of `total` bytes that is not in reencryption state.
    pub fn none(total: u64) -> Self {
        OnlineStatus {
            state: RunState::Absent,
            done: 0,
            total,
            hotzones: 0,
            hotzone_max: Duration::ZERO,
            request_max: Duration::ZERO,
            target: None,
            old_key_held: false,
            header_error: None,
        }
    }
}

/// One segment's encryption under `key`: the same data cipher the node's plain path
/// uses, so the new segment's becomes the node's as it is when the run hands over.
fn segment_crypt(s: &Segment, key: &SecretBytes) -> Result<DataCrypt> {
    let spec = CipherSpec::from_luks2(&s.encryption, key.len())?;
    let cipher = Arc::new(SectorCipher::new(&spec, key.as_bytes())?);
    Ok(DataCrypt::new(cipher, s.iv_tweak, s.sector_size as usize))
}

/// The key material of a run, shared by the run and the requests admitted through
/// it; dropped (everything in it zeroizes on drop) when the run hands the node over.
struct Keys {
    old: DataCrypt,
    new: DataCrypt,
    old_key: SecretBytes,
    new_key: SecretBytes,
}

/// The hotzone lock and the requests in flight.
struct Gate {
    done: u64,
    hot: Option<(u64, u64)>,
    hot_since: Option<Instant>,
    inflight: Vec<(u64, u64)>,
    state: RunState,
    hotzones: u64,
    hotzone_max: Duration,
    request_max: Duration,
    /// `None` once the run has handed the node over.
    keys: Option<Arc<Keys>>,
    /// See [`OnlineStatus::header_error`].
    header_error: Option<String>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Where the data is, as the LUKS driver needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OnlineLayout {
    pub offset: u64,
    pub size: Option<u64>,
    /// The larger of both sector sizes (unaligned writes are read-modify-written on it).
    pub sector: u64,
}

/// The shared state of an image reencrypted while it is served.
pub struct Online {
    gate: Mutex<Gate>,
    cv: Condvar,
    /// Alive while any holder keeps the run's keys (for the status).
    keys_alive: Weak<Keys>,
    /// The node's request lock, where a finished run puts the new cipher.
    node: RequestLock,
    /// The node's header view (on the header device), where a finished run puts the
    /// header it wrote.
    header: Arc<HeaderView>,
    target: TargetEncryption,
    new_spec: CipherSpec,
    /// The key slots the passphrase opened the old and the new volume key with.
    old_slot: u32,
    new_slot: u32,
    data: Arc<dyn BlockDriver>,
    layout: OnlineLayout,
    total: u64,
    stop: AtomicBool,
    /// Set once the run has finished and handed the node over: every byte is in the
    /// new encryption and the node serves it on its plain path.
    finished: AtomicBool,
}

/// A request admitted for `range`: `done` is stable while it lives, and so are the
/// keys it holds.
pub(crate) struct Admitted<'a> {
    online: &'a Online,
    range: (u64, u64),
    done: u64,
    keys: Arc<Keys>,
    start: Instant,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut g = self.online.lock();
        if let Some(i) = g.inflight.iter().position(|r| *r == self.range) {
            g.inflight.swap_remove(i);
        }
        g.request_max = g.request_max.max(self.start.elapsed());
        drop(g);
        self.online.cv.notify_all();
    }
}

impl Admitted<'_> {
    /// Encrypt or decrypt the whole sectors in `buf` at guest offset `g`: the new
    /// encryption below `done`, the old one above.
    pub(crate) fn crypt(&self, buf: &mut [u8], g: u64, encrypt: bool) -> Result<()> {
        let split = self.done.saturating_sub(g).min(buf.len() as u64) as usize;
        let (below, above) = buf.split_at_mut(split);
        let (new, old) = (&self.keys.new, &self.keys.old);
        for (seg, part, at) in [(new, below, g), (old, above, g + split as u64)] {
            if !part.is_empty() {
                // The driver aligns requests to the larger sector size and `done` to the
                // hotzone; anything else would encrypt across sector boundaries.
                let ss = seg.sector as u64;
                if !(at.is_multiple_of(ss) && (part.len() as u64).is_multiple_of(ss)) {
                    bail!(
                        Internal,
                        "online reencryption: bytes {at}+{} are not whole {ss}-byte sectors",
                        part.len()
                    );
                }
                seg.apply(part, at, encrypt)?;
            }
        }
        Ok(())
    }
}

impl Online {
    /// Open the reencryption of the LUKS2 header of `header` (data on `data`) with
    /// `passphrase`, which must open both the old and the new volume key, for the node
    /// whose request lock is `node` and whose header view is `header`. An interrupted
    /// hotzone is recovered first. `None` when no reencryption is in progress (any
    /// more: the recovery may have finished it).
    pub(crate) fn open(
        header: Arc<HeaderView>,
        data: Arc<dyn BlockDriver>,
        passphrase: &[u8],
        node: RequestLock,
    ) -> Result<Option<Arc<Online>>> {
        let hdev = header.dev().clone();
        let mut vol = header.read()?;
        let v2 = vol.v2_mut()?;
        let Some(st) = v2.reencrypt_state()? else {
            return Ok(None);
        };
        vmcrypt_error::ensure!(
            st.keyslot.mode == "reencrypt",
            Unsupported,
            "a LUKS2 {} in place (cryptsetup reencrypt --{}) is in progress; the data \
             cannot be served until it is finished: finish it offline with `vmcrypt luks \
             reencrypt --resume-only` (with --header FILE for a detached header)",
            if st.keyslot.mode == "decrypt" {
                "decryption"
            } else {
                "encryption"
            },
            st.keyslot.mode
        );
        let (old_digest, new_digest) = st.key_digests()?;
        let new = v2.unlock_digest_slot(passphrase, new_digest)?;
        let old = v2.unlock_digest_slot(passphrase, old_digest).ctx(
            "the old volume key of the reencryption in progress (finish it offline with \
             vmcrypt luks reencrypt --resume-only)",
        )?;
        let (old_key, new_key) = (old.volume_key, new.volume_key);
        let mut r = Reencryption::load(v2, data.clone(), &old_key, &new_key, None)?;
        let writable = !(hdev.is_read_only() || data.is_read_only());
        if st.hot_segment().is_some() && !writable {
            bail!(
                ReadOnly,
                "the LUKS2 reencryption was interrupted inside a hotzone: open the image \
                 read-write (or run vmcrypt luks reencrypt --resume-only) to recover it"
            );
        }
        if r.recover_interrupted()? {
            return Ok(None);
        }
        let pos = r.position()?;
        drop(r);
        let st = v2
            .reencrypt_state()?
            .ok_or_else(|| Error::internal("reencryption state lost"))?;
        let layout = OnlineLayout {
            offset: v2.header().metadata.data_offset()?,
            size: match st.old.size {
                SegmentSize::Bytes(n) => Some(n),
                SegmentSize::Dynamic => None,
            },
            sector: u64::from(st.old.sector_size.max(st.new.sector_size)),
        };
        let keys = Arc::new(Keys {
            old: segment_crypt(&st.old, &old_key)?,
            new: segment_crypt(&st.new, &new_key)?,
            old_key,
            new_key,
        });
        let new_spec = *keys.new.cipher.spec();
        let target = TargetEncryption {
            cipher: new_spec.luks2_encryption(),
            key_bits: (new_spec.key_bytes * 8) as u32,
            sector_size: st.new.sector_size,
            key_slot: Some(new.slot),
        };
        let keys_alive = Arc::downgrade(&keys);
        Ok(Some(Arc::new(Online {
            gate: Mutex::new(Gate {
                done: pos.done,
                hot: None,
                hot_since: None,
                inflight: Vec::new(),
                state: RunState::Idle,
                hotzones: 0,
                hotzone_max: Duration::ZERO,
                request_max: Duration::ZERO,
                keys: Some(keys),
                header_error: None,
            }),
            cv: Condvar::new(),
            keys_alive,
            node,
            header,
            target,
            new_spec,
            old_slot: old.slot,
            new_slot: new.slot,
            data,
            layout,
            total: pos.total,
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        })))
    }

    /// The request layout: while the run goes, requests are whole sectors of the larger
    /// of both sector sizes; once it has finished, every byte is in the new encryption
    /// and whole new sectors suffice (after 4096 -> 512, 512-byte writes are no longer
    /// read-modify-written). The data size is a multiple of both, so the node's size
    /// does not change; a request that read the larger size is still whole sectors.
    pub(crate) fn layout(&self) -> OnlineLayout {
        let mut l = self.layout;
        if self.finished() {
            l.sector = u64::from(self.target.sector_size);
        }
        l
    }

    /// Whether the run has finished and handed the node over to its plain path under
    /// the new key (see the module doc).
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The new encryption's cipher.
    pub(crate) fn new_spec(&self) -> CipherSpec {
        self.new_spec
    }

    /// The key slot the passphrase opened the old volume key with.
    pub(crate) fn old_slot(&self) -> u32 {
        self.old_slot
    }

    /// The key slot the passphrase opened the new volume key with (it survives the
    /// finish, which removes the old key's slots).
    pub(crate) fn new_slot(&self) -> u32 {
        self.new_slot
    }

    fn lock(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit a request for guest bytes `[g, g + len)`: wait while the hotzone
    /// overlaps it, then count it in flight. The node asks only before the hand-over
    /// (both happen under its request lock), so the keys are still there.
    pub(crate) fn admit(&self, g: u64, len: usize) -> Result<Admitted<'_>> {
        let start = Instant::now();
        let range = (g, g + len as u64);
        let mut gate = self.lock();
        while let Some(h) = gate.hot.filter(|h| overlaps(*h, range)) {
            if let RunState::Failed(why) = &gate.state {
                bail!(
                    Io,
                    "bytes {}..{} are in a hotzone whose reencryption failed ({why}); \
                     restart the server to recover it",
                    h.0,
                    h.1
                );
            }
            gate = self.cv.wait(gate).unwrap_or_else(|e| e.into_inner());
        }
        let Some(keys) = gate.keys.clone() else {
            bail!(
                Internal,
                "a request reached the reencryption after it handed the node over"
            );
        };
        gate.inflight.push(range);
        Ok(Admitted {
            online: self,
            range,
            done: gate.done,
            keys,
            start,
        })
    }

    /// Start (or resume) the background run with hotzones of `hotzone` bytes.
    pub fn start(self: &Arc<Self>, hotzone: Option<u64>) -> Result<()> {
        if self.header.dev().is_read_only() || self.data.is_read_only() {
            bail!(
                ReadOnly,
                "the image is open read-only: it cannot be reencrypted"
            );
        }
        let mut g = self.lock();
        match &g.state {
            RunState::Running => bail!(Usage, "the reencryption is already running"),
            RunState::Finished => bail!(Usage, "the reencryption is finished"),
            RunState::Failed(why) if g.hot.is_some() => bail!(
                Io,
                "the reencryption failed inside a hotzone ({why}); restart the server"
            ),
            _ => {}
        }
        g.state = RunState::Running;
        drop(g);
        self.stop.store(false, Ordering::SeqCst);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("luks-reencrypt".into())
            .spawn(move || {
                let r = me.work(hotzone.unwrap_or(ONLINE_HOTZONE));
                if matches!(r, Ok(true)) {
                    me.hand_over();
                }
                let mut g = me.lock();
                g.state = match r {
                    Ok(true) => RunState::Finished,
                    Ok(false) => RunState::Paused,
                    Err(e) => RunState::Failed(e.display_chain()),
                };
                drop(g);
                me.cv.notify_all();
            });
        if let Err(e) = spawned {
            self.lock().state = RunState::Failed(e.to_string());
            bail!(Io, "cannot start the reencryption thread: {e}");
        }
        Ok(())
    }

    fn work(&self, hotzone: u64) -> Result<bool> {
        let keys = self
            .lock()
            .keys
            .clone()
            .ok_or_else(|| Error::internal("the finished reencryption was started again"))?;
        let mut vol = self.header.read()?;
        let v2 = vol.v2_mut()?;
        let mut r = Reencryption::load(
            v2,
            self.data.clone(),
            &keys.old_key,
            &keys.new_key,
            Some(hotzone),
        )?;
        r.run_gated(&mut |_| {}, &|| !self.stop.load(Ordering::SeqCst), self)
    }

    /// Hand the node over to its plain path once the run has finished (its final
    /// header write is done). The header it wrote is read first, without any lock.
    /// The node's request lock, held exclusively, waits for the requests in flight,
    /// each of which holds it shared from its admission to its last byte: none
    /// straddles the switch. The new segment's cipher becomes the node's data cipher,
    /// the header read becomes the node's header view, and the run's keys are dropped
    /// (no request holds them any more), zeroized as they go.
    fn hand_over(&self) {
        let fresh = self.header.read();
        let mut plain = self.node.write().unwrap_or_else(|e| e.into_inner());
        let keys = self.lock().keys.take();
        if let Some(k) = &keys {
            *plain = Some(k.new.clone());
        }
        self.follow_header(fresh);
        self.finished.store(true, Ordering::Release);
        drop(plain);
        drop(keys);
    }

    /// Make `fresh`, the header just read back after a transition wrote it, the
    /// node's header view; if it could not be read, keep the view and say so in the
    /// status.
    pub(crate) fn follow_header(&self, fresh: Result<Volume>) {
        let error = match fresh {
            Ok(vol) => {
                self.header.install(vol);
                None
            }
            Err(e) => Some(format!(
                "the LUKS header could not be read back after the reencryption changed it \
                 ({}); the node serves on, but describes the header as it was before \
                 until the image is opened again",
                e.display_chain()
            )),
        };
        self.lock().header_error = error;
    }

    /// Stop the run after the current hotzone.
    pub fn pause(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Wait until the run is no longer running (tests, shutdown).
    pub fn wait_stopped(&self) {
        let mut g = self.lock();
        while g.state == RunState::Running {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn status(&self) -> OnlineStatus {
        let g = self.lock();
        OnlineStatus {
            state: g.state.clone(),
            done: g.done,
            total: self.total,
            hotzones: g.hotzones,
            hotzone_max: g.hotzone_max,
            request_max: g.request_max,
            target: Some(self.target.clone()),
            old_key_held: self.keys_alive.strong_count() > 0,
            header_error: g.header_error.clone(),
        }
    }
}

impl HotzoneGate for Online {
    fn enter(&self, offset: u64, len: u64) {
        let hot = (offset, offset + len);
        let mut g = self.lock();
        g.hot = Some(hot);
        g.hot_since = Some(Instant::now());
        while g.inflight.iter().any(|r| overlaps(*r, hot)) {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn leave(&self, done: Option<u64>) {
        let mut g = self.lock();
        if let Some(d) = done {
            g.done = d;
            g.hot = None;
            g.hotzones += 1;
            if let Some(t) = g.hot_since.take() {
                g.hotzone_max = g.hotzone_max.max(t.elapsed());
            }
        } else {
            // Keep the hotzone locked: its data is in an unknown state until a restart
            // recovers it. The run's error is recorded when its thread ends.
            g.state = RunState::Failed("hotzone write failed".into());
        }
        drop(g);
        self.cv.notify_all();
    }
}
