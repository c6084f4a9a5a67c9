//! LUKS2 reencryption in cryptsetup's on-disk format (offline, forward, new volume
//! key): [`init`] starts one, [`Reencryption`] resumes and runs it hotzone by hotzone.
//!
//! Each hotzone goes: read the old ciphertext; store its protection in the
//! `reencrypt` keyslot's area (checksums of each block, or a journal copy) and flush;
//! write the header naming the hotzone `in-reencryption` (both copies, each flushed);
//! decrypt, encrypt with the new key, write and flush the data; write the header
//! with the hotzone moved into the new segment. An interruption at any write leaves
//! either the previous header (the hotzone untouched, or the protection half written
//! and unused) or the hot header, from which the hotzone is recovered: with
//! checksums, a block whose hash still matches is old ciphertext and is reencrypted,
//! any other is already new; with a journal, the copy is reencrypted into place. With
//! resilience `none` an interrupted hotzone cannot be recovered (as in cryptsetup).
//! The last header write removes the old keyslots and digest, the backup segments,
//! the `reencrypt` keyslot and the requirement; then the freed areas are wiped.
//!
//! The data passes are streamed (`chunks.rs`): each thread reads one chunk at a time
//! into a buffer of its own that stays in the CPU cache, so the hotzone is read once to
//! protect it and once more to transform it rather than held whole in memory (which
//! cost more, in page faults and memory traffic, than the second read). A journal is
//! copied by [`BlockDriver::copy_from`] (`copy_file_range` between files: the kernel
//! copies the hotzone without passing it through this process).
mod chunks;
pub mod decrypt;
pub mod encrypt;
pub mod encrypt_init;
mod hotzone;
pub mod init;
pub mod online;
pub mod shift;
pub mod shift_init;

use super::{Luks2Volume, verify_digest};
use crate::driver::BlockDriver;
use crate::drivers::luks::Unlocked;
use crate::drivers::luks::check_data_sector_size;
use chunks::Chunks;
use rayon::prelude::*;
use std::sync::Arc;
use vmcrypt_crypto::{CipherSpec, HashAlg, SecretBytes, SectorCipher, kdf, random};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};
use vmcrypt_format::luks2::reencrypt::{Layout, ReencryptState, Resilience, Step};
use vmcrypt_format::luks2::{Digest, KeyslotKind, Luks2Header, Metadata, SegmentSize};

/// The resilience modes vmcrypt writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResilienceChoice {
    Checksum,
    Journal,
    None,
}

impl ResilienceChoice {
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "checksum" => ResilienceChoice::Checksum,
            "journal" => ResilienceChoice::Journal,
            "none" => ResilienceChoice::None,
            other => bail!(
                Usage,
                "unsupported resilience mode \"{other}\" (checksum, journal or none)"
            ),
        })
    }

    /// The checksum hash `name` names (default sha256) for a run started with this
    /// choice. A checksum run's is checked ready to hash ([`hashing`]) here, before
    /// anything is written; a journal or none run hashes nothing, so only the name
    /// is checked.
    pub fn hash(self, name: Option<&str>) -> Result<HashAlg> {
        let h = HashAlg::from_name(name.unwrap_or("sha256")).ctx("--resilience-hash")?;
        match self {
            ResilienceChoice::Checksum => hashing(h),
            ResilienceChoice::Journal | ResilienceChoice::None => Ok(h),
        }
    }
}

/// The hash a run protected by `r` checksums its hotzones with, `None` for a run
/// that hashes nothing (journal, none, datashift); checked ready to hash
/// ([`hashing`]). Every engine's `load` calls it, before anything is written.
pub(super) fn checksum_hash(r: &Resilience) -> Result<Option<HashAlg>> {
    match r {
        Resilience::Checksum { hash, .. } => {
            let h = HashAlg::from_name(hash).ctx("reencryption checksum")?;
            hashing(h).map(Some)
        }
        _ => Ok(None),
    }
}

/// `h`, once the kernel that will hash with it is the one asked for: a
/// `VMCRYPT_SHA256_KERNEL` naming no kernel this CPU runs is refused (hashing would
/// quietly use the best one instead). The one place a reencryption checks it: when a
/// checksum run starts ([`ResilienceChoice::hash`]) and when one is loaded
/// ([`checksum_hash`]), so a server resuming a run at open refuses as the jobs do.
fn hashing(h: HashAlg) -> Result<HashAlg> {
    h.check_each_kernel()?;
    Ok(h)
}

/// Default hotzone: large enough that header writes cost little, small enough to
/// keep memory use modest.
pub const DEFAULT_HOTZONE: u64 = 64 << 20;

/// Piece of a hotzone one thread reads, hashes, transforms and writes (a multiple of
/// every sector and checksum block size).
pub(super) const CHUNK: usize = 1 << 20;

/// Add the verification digest of `vdata` (PBKDF2-SHA256, `iterations` or about
/// 1/8 s worth) bound to the `reencrypt` keyslot `rslot` and no segment.
pub(super) fn add_verification_digest(
    md: &mut vmcrypt_format::luks2::Metadata,
    vdata: &SecretBytes,
    rslot: u32,
    iterations: Option<u32>,
) -> Result<()> {
    let vid = md.first_free_digest()?;
    let vd = new_digest(HashAlg::Sha256, vdata.as_bytes(), vid, rslot, iterations)?;
    md.set_digest(vid, vd.to_json())?;
    md.set_digest_segments(vid, vec![])
        .ctx("verification digest")
}

/// A pbkdf2 digest of `key` bound to `keyslot`, with no segments yet: `forced`
/// iterations, else about 1/8 s worth (at least 1000), as cryptsetup does.
pub(crate) fn new_digest(
    hash: HashAlg,
    key: &[u8],
    id: u32,
    keyslot: u32,
    forced: Option<u32>,
) -> Result<Digest> {
    let mut salt = vec![0u8; 32];
    random::fill(&mut salt)?;
    let iterations = forced.unwrap_or_else(|| {
        let per_sec = kdf::pbkdf2_iterations_per_second(
            hash,
            hash.output_len(),
            std::time::Duration::from_millis(50),
        );
        (per_sec / 8).clamp(1000, u64::from(u32::MAX)) as u32
    });
    let mut digest = vec![0u8; hash.output_len()];
    kdf::pbkdf2(hash, key, &salt, iterations, &mut digest);
    Ok(Digest {
        id,
        kind: "pbkdf2".into(),
        keyslots: vec![keyslot],
        segments: vec![],
        hash: hash.name().into(),
        iterations,
        salt,
        digest,
    })
}

/// Told before and after each hotzone, so that a driver serving the data while it is
/// reencrypted can hold requests that touch the hotzone (see [`online`]).
pub trait HotzoneGate {
    /// The hotzone `[offset, offset + len)` (from the data start) is about to be
    /// read; returns once no request touching it is in flight.
    fn enter(&self, offset: u64, len: u64);
    /// The hotzone is done: everything below `done` is in the new encryption; `None`
    /// when its step failed (its state on disk is then unknown until recovered).
    fn leave(&self, done: Option<u64>);
}

/// No one to tell (offline runs).
struct NoGate;

impl HotzoneGate for NoGate {
    fn enter(&self, _: u64, _: u64) {}
    fn leave(&self, _: Option<u64>) {}
}

/// Where a run stands (for progress lines and reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub done: u64,
    pub total: u64,
}

impl Luks2Volume {
    /// The reencryption in progress, if any.
    pub fn reencrypt_state(&self) -> Result<Option<ReencryptState>> {
        ReencryptState::load(&self.hdr.metadata)
    }

    /// Data offset and size (the bytes after the data offset on the data device).
    pub fn layout_on(&self, data: &dyn BlockDriver) -> Result<Layout> {
        let off = self.hdr.metadata.data_offset()?;
        let size = data.size().saturating_sub(off);
        Ok(Layout {
            data_offset: off,
            data_size: size,
        })
    }

    fn layout(&self) -> Result<Layout> {
        self.layout_on(self.dev.as_ref())
    }

    /// The volume key of digest `digest` that `passphrase` opens in any of its keyslots.
    pub fn unlock_digest(&self, passphrase: &[u8], digest: u32) -> Result<SecretBytes> {
        Ok(self.unlock_digest_slot(passphrase, digest)?.volume_key)
    }

    /// As [`Self::unlock_digest`], with the keyslot that opened it.
    pub(crate) fn unlock_digest_slot(&self, passphrase: &[u8], digest: u32) -> Result<Unlocked> {
        for k in self.hdr.metadata.keyslots()? {
            let KeyslotKind::Luks2(l) = k.kind else {
                continue;
            };
            if self.hdr.metadata.digest_for_keyslot(k.id)?.map(|d| d.id) != Some(digest) {
                continue;
            }
            if let Some(u) = self.try_keyslot(k.id, &l, passphrase)? {
                return Ok(u);
            }
        }
        bail!(
            WrongKey,
            "no key available with this passphrase for LUKS2 digest {digest}"
        )
    }

    /// Write `next` even while the header carries reencryption requirements.
    pub(crate) fn write_header_any(&mut self, next: Luks2Header) -> Result<()> {
        self.write_header_inner(next)
    }
}

/// A reencryption being run on an open volume.
pub struct Reencryption<'a> {
    vol: &'a mut Luks2Volume,
    data: Arc<dyn BlockDriver>,
    st: ReencryptState,
    layout: Layout,
    old: SectorCipher,
    new: SectorCipher,
    hotzone: u64,
    /// Block the hotzone is aligned to (checksum block or largest sector).
    align: u64,
}

impl<'a> Reencryption<'a> {
    /// Load the reencryption state of `vol` (data on `data`), check both keys against
    /// their digests and the metadata against the verification digest.
    pub fn load(
        vol: &'a mut Luks2Volume,
        data: Arc<dyn BlockDriver>,
        old_key: &SecretBytes,
        new_key: &SecretBytes,
        hotzone: Option<u64>,
    ) -> Result<Self> {
        let Some(st) = vol.reencrypt_state()? else {
            bail!(Usage, "no LUKS2 reencryption is in progress");
        };
        ensure!(
            st.keyslot.mode == "reencrypt" && st.keyslot.direction == "forward",
            Unsupported,
            "LUKS2 reencryption mode {} / direction {} is not supported by vmcrypt",
            st.keyslot.mode,
            st.keyslot.direction
        );
        if let Resilience::Other(t) = &st.keyslot.resilience {
            bail!(
                Unsupported,
                "LUKS2 reencryption resilience \"{t}\" is not supported"
            );
        }
        let md = &vol.hdr.metadata;
        let digests = md.digests()?;
        let digest = |id: u32| {
            digests
                .iter()
                .find(|d| d.id == id)
                .ok_or_else(|| Error::corrupt(format!("LUKS2 digest {id} is missing")))
        };
        let (old_digest, new_digest) = st.key_digests()?;
        ensure!(
            verify_digest(digest(old_digest)?, old_key, &vol.limits)?
                && verify_digest(digest(new_digest)?, new_key, &vol.limits)?,
            WrongKey,
            "the volume keys do not match the reencryption digests"
        );
        let vid = st
            .verify_digest
            .ok_or_else(|| Error::corrupt("LUKS2 reencryption digest is missing"))?;
        let vdata = SecretBytes::new(st.verification_data(old_key.as_bytes(), new_key.as_bytes()));
        ensure!(
            verify_digest(digest(vid)?, &vdata, &vol.limits)?,
            Corrupt,
            "LUKS2 reencryption metadata is invalid (verification digest mismatch)"
        );
        check_data_sector_size("the LUKS2 reencryption's old segment", st.old.sector_size)?;
        check_data_sector_size("the LUKS2 reencryption's new segment", st.new.sector_size)?;
        let spec = |enc: &str, k: &SecretBytes| CipherSpec::from_luks2(enc, k.len());
        let old = SectorCipher::new(&spec(&st.old.encryption, old_key)?, old_key.as_bytes())?;
        let new = SectorCipher::new(&spec(&st.new.encryption, new_key)?, new_key.as_bytes())?;
        let (hotzone, align) = hotzone::size(
            &st.keyslot,
            u64::from(st.old.sector_size.max(st.new.sector_size)),
            CHUNK as u32,
            hotzone,
        )?;
        let mut layout = vol.layout_on(data.as_ref())?;
        if let SegmentSize::Bytes(n) = st.old.size {
            layout.data_size = layout.data_size.min(n);
        }
        ensure!(
            layout.data_size.is_multiple_of(align),
            Unsupported,
            "data size {} is not a multiple of the reencryption block ({align} bytes)",
            layout.data_size
        );
        Ok(Reencryption {
            vol,
            data,
            st,
            layout,
            old,
            new,
            hotzone,
            align,
        })
    }

    /// Total and finished bytes.
    pub fn position(&self) -> Result<Position> {
        let done = match self.st.hot_segment() {
            Some(h) => h.offset - self.layout.data_offset,
            None => self
                .st
                .progress(&self.vol.hdr.metadata, self.layout.data_size)?,
        };
        Ok(Position {
            done,
            total: self.layout.data_size,
        })
    }

    /// Run to the end (or until `keep_going` says stop after a hotzone). Calls
    /// `progress` after each hotzone. Returns true when finished.
    pub fn run(
        &mut self,
        progress: &mut dyn FnMut(Position),
        keep_going: &dyn Fn() -> bool,
    ) -> Result<bool> {
        self.run_gated(progress, keep_going, &NoGate)
    }

    /// Finish a hotzone that was interrupted (from its protection); true if that
    /// finished the whole reencryption.
    pub fn recover_interrupted(&mut self) -> Result<bool> {
        if let Some(h) = self.st.hot_segment().cloned() {
            let len = match h.size {
                SegmentSize::Bytes(n) => n,
                SegmentSize::Dynamic => bail!(Corrupt, "LUKS2 hotzone segment has no size"),
            };
            self.recover(h.offset - self.layout.data_offset, len)?;
        }
        Ok(self.vol.reencrypt_state()?.is_none())
    }

    /// [`Self::run`], telling `gate` before and after each hotzone.
    pub fn run_gated(
        &mut self,
        progress: &mut dyn FnMut(Position),
        keep_going: &dyn Fn() -> bool,
        gate: &dyn HotzoneGate,
    ) -> Result<bool> {
        if self.recover_interrupted()? {
            return Ok(true);
        }
        let mut pos = self.position()?;
        if pos.done >= pos.total {
            self.finish()?;
            return Ok(true);
        }
        while pos.done < pos.total {
            if !keep_going() {
                return Ok(false);
            }
            let len = self.hotzone.min(pos.total - pos.done);
            gate.enter(pos.done, len);
            let stepped = self.step(pos.done, len);
            gate.leave(stepped.is_ok().then_some(pos.done + len));
            stepped?;
            pos.done += len;
            progress(pos);
        }
        Ok(true)
    }

    fn commit(&mut self, step: Step) -> Result<()> {
        let mut next = self.vol.hdr.clone();
        self.st.apply(&mut next.metadata, self.layout, step)?;
        self.vol.write_header_any(next)?;
        self.st = self
            .vol
            .reencrypt_state()?
            .ok_or_else(|| Error::internal("reencryption state lost"))?;
        Ok(())
    }

    /// One hotzone at `offset` (from the data start) of `len` bytes: protect it, mark
    /// it hot, then read, transform and write it chunk by chunk over the cores, flush,
    /// mark it done.
    fn step(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.protect(offset, len)? {
            self.commit(Step::Hot { offset, len })?;
        }
        let at = self.layout.data_offset + offset;
        let data = &self.data;
        Chunks::new(data.as_ref(), at, len).try_for_each(|rel, c| {
            self.transform(offset + rel, c)?;
            data.write_at(c, at + rel)
                .with_ctx(|| format!("writing the hotzone at {}", at + rel))
        })?;
        self.data.flush()?;
        self.complete(offset + len)
    }

    /// Record that everything below `done` is in the new encryption. The last hotzone
    /// goes straight to [`Self::finish`]: a header whose only regular segment is the new
    /// one while the reencryption metadata remains would make cryptsetup start over.
    fn complete(&mut self, done: u64) -> Result<()> {
        if done >= self.layout.data_size {
            self.finish()
        } else {
            self.commit(Step::Post { done })
        }
    }

    /// Store the protection of the hotzone at `offset` (`len` bytes) in the reencrypt
    /// area and flush it: the hash of each checksum block (read chunk by chunk), or the
    /// old ciphertext itself as a journal (copied piece by piece with
    /// [`BlockDriver::copy_from`]: in the kernel when the header and the data are
    /// files); false for `none`.
    fn protect(&self, offset: u64, len: u64) -> Result<bool> {
        let k = &self.st.keyslot;
        let at = self.layout.data_offset + offset;
        let chunks = Chunks::new(self.data.as_ref(), at, len);
        let dev = &self.vol.dev;
        let area = |what: &str, n: u64| {
            ensure!(
                n <= k.area_size,
                Internal,
                "hotzone {what} do not fit the reencryption area"
            );
            Ok(())
        };
        match &k.resilience {
            Resilience::Checksum { hash, sector_size } => {
                let (h, bs) = (HashAlg::from_name(hash)?, *sector_size as usize);
                let mut sums = vec![0u8; len as usize / bs * h.output_len()];
                area("checksums", sums.len() as u64)?;
                chunks.hash_blocks(h, bs, &mut sums)?;
                dev.write_at(&sums, k.area_offset)
            }
            Resilience::Journal => {
                area("journal bytes", len)?;
                chunks.copy_to(dev.as_ref(), k.area_offset)
            }
            _ => return Ok(false),
        }
        .ctx("writing the reencryption resilience area")?;
        dev.flush()?;
        Ok(true)
    }

    /// Decrypt `buf` (old ciphertext at `offset`) and encrypt it with the new key.
    fn transform(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (o, n) = (&self.st.old, &self.st.new);
        self.old
            .decrypt(o.iv_tweak + offset / 512, o.sector_size as usize, buf)?;
        self.new
            .encrypt(n.iv_tweak + offset / 512, n.sector_size as usize, buf)
    }

    /// Finish an interrupted hotzone from its protection, then mark it done.
    fn recover(&mut self, offset: u64, len: u64) -> Result<()> {
        let k = self.st.keyslot.clone();
        let redo = |at: u64, c: &mut [u8]| self.transform(at, c);
        hotzone::recover(
            self.vol,
            self.data.as_ref(),
            &k,
            self.layout,
            self.align,
            offset,
            len,
            &redo,
        )?;
        self.complete(offset + len)
    }

    /// Drop the old keyslots, the old and verification digests, the backup segments,
    /// the reencrypt keyslot and the requirement in one header write; wipe the areas.
    fn finish(&mut self) -> Result<()> {
        finish_metadata(self.vol, &self.st, self.layout)
    }
}

impl Luks2Volume {
    /// Finish a reencryption whose data is all in the new encryption but whose old key
    /// can no longer be opened: cryptsetup removes the old key slots one header write at
    /// a time before its final write, so a kill there leaves the old digest without a
    /// key slot. Only metadata is written; `new_key` must match the new digest. Returns
    /// the data bytes.
    pub fn reencrypt_finish_done(
        &mut self,
        data: &dyn BlockDriver,
        new_key: &SecretBytes,
    ) -> Result<u64> {
        let Some(st) = self.reencrypt_state()? else {
            bail!(Usage, "no LUKS2 reencryption is in progress");
        };
        let new_id = st.key_digests()?.1;
        let digest = self
            .hdr
            .metadata
            .digests()?
            .into_iter()
            .find(|d| d.id == new_id)
            .ok_or_else(|| Error::corrupt("LUKS2 reencryption: the new digest is missing"))?;
        ensure!(
            verify_digest(&digest, new_key, &self.limits)?,
            WrongKey,
            "the volume key does not match the new reencryption digest"
        );
        let layout = self.layout_on(data)?;
        ensure!(
            st.hot_segment().is_none()
                && st.progress(&self.hdr.metadata, layout.data_size)? >= layout.data_size,
            WrongKey,
            "the old volume key is needed: the reencryption is not finished"
        );
        finish_metadata(self, &st, layout)?;
        Ok(layout.data_size)
    }
}

/// The final header write of a reencryption (see [`Reencryption::run`]), then the wipes.
fn finish_metadata(vol: &mut Luks2Volume, st: &ReencryptState, layout: Layout) -> Result<()> {
    let mut next = vol.hdr.clone();
    st.apply(
        &mut next.metadata,
        layout,
        Step::Post {
            done: layout.data_size,
        },
    )?;
    let md = &mut next.metadata;
    let (old_digest, new_digest) = st.key_digests()?;
    let wipe = remove_old_keyslots(md, Some(old_digest), st.keyslot.id)?;
    let mut segs = serde_json::Map::new();
    segs.insert(
        "0".into(),
        vmcrypt_format::luks2::reencrypt::segment_json(
            &vmcrypt_format::luks2::Segment {
                flags: vec![],
                size: SegmentSize::Dynamic,
                ..st.new.clone()
            },
            None,
        ),
    );
    md.set_segments(segs)?;
    md.set_digest_segments(new_digest, vec!["0".into()])?;
    md.erase_unused_digests()?;
    vmcrypt_format::luks2::reencrypt::drop_requirement(md)?;
    vol.write_header_any(next)?;
    // Old key material gets noise, as a killed key slot does; the resilience area
    // (old ciphertext in a journal, or checksums) only needs clearing.
    for (off, size) in wipe {
        vol.wipe_area(off, size)?;
    }
    let k = &st.keyslot;
    vol.dev.write_zeroes(k.area_offset, k.area_size)?;
    vol.dev.flush()
}

/// Remove from `md` the keyslots bound to digest `old` and the `reencrypt` keyslot
/// `rslot`; returns the areas of the old keyslots, to wipe after the header write.
pub(super) fn remove_old_keyslots(
    md: &mut Metadata,
    old: Option<u32>,
    rslot: u32,
) -> Result<Vec<(u64, u64)>> {
    let mut wipe = vec![];
    for k in md.keyslots()? {
        let bound_old = md.digest_for_keyslot(k.id)?.map(|d| d.id) == old;
        if bound_old {
            wipe.push((k.area_offset, k.area_size));
        }
        if bound_old || k.id == rslot {
            md.remove_keyslot(k.id)?;
        }
    }
    Ok(wipe)
}

/// Hash of each `bs`-byte block of `data`, concatenated (over the cores).
pub(super) fn checksums(h: HashAlg, bs: usize, data: &[u8]) -> Vec<u8> {
    // A last partial block (the end of a last hotzone) is hashed as it is.
    let mut out = vec![0u8; data.len().div_ceil(bs) * h.output_len()];
    let per_chunk = CHUNK / bs * h.output_len();
    data.par_chunks(CHUNK)
        .zip(out.par_chunks_mut(per_chunk))
        .for_each(|(c, s)| h.digest_each(bs, c, s));
    out
}
