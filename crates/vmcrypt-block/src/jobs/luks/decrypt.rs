//! `vmcrypt luks reencrypt --decrypt`: decrypt a LUKS2 device in place with its
//! detached header, in cryptsetup's format (mode `decrypt`, direction `backward`), so
//! either tool can resume the other's run. A device with its header attached goes
//! through [`super::decrypt_shift`]. Afterwards the device holds the plaintext
//! and the header file one `linear` segment, as cryptsetup leaves it.
use super::Target;
use super::reencrypt::{
    ReencryptReport, ReencryptRequest, end_position, finished_report, old_key_listed, run_steps,
    unlock_to_start,
};
use crate::driver::BlockDriver;
use crate::drivers::luks::Luks2Volume;
use crate::drivers::luks::v2::reencrypt::decrypt::{DecryptParams, Decryption};
use crate::drivers::luks::v2::reencrypt::shift::ShiftDecryption;
use crate::drivers::luks::v2::reencrypt::{Position, ResilienceChoice};
use crate::jobs::Events;
use std::path::Path;
use std::sync::Arc;
use vmcrypt_error::{ErrorKind, Result, bail, ensure};

/// Which decryption `t` asks for, refused before anything is asked or written when
/// it cannot run: true when the device carries its own LUKS header (the header moves
/// into the new file `--header FILE`, which must not exist), false when the header is
/// already detached in that file.
pub(super) fn precheck(t: &Target) -> Result<bool> {
    let Some(h) = &t.header else {
        bail!(
            Usage,
            "{}: --decrypt needs --header FILE: the detached header, or for a device with              its own header the new file the header is moved to",
            t.device
        );
    };
    let mut magic = [0u8; 6];
    let n = std::fs::File::open(Path::new(&t.device))
        .and_then(|f| std::os::unix::fs::FileExt::read_at(&f, &mut magic, 0))
        .unwrap_or(0);
    let attached = n == 6 && (&magic == b"LUKS\xba\xbe" || &magic == b"SKUL\xba\xbe");
    ensure!(
        !(attached && Path::new(h).exists()),
        Usage,
        "{}: the device has a LUKS header of its own and {h} already exists; the header \
         is moved into a new file (remove {h} if it is left from an interrupted start: the \
         device still holds its header)",
        t.device
    );
    Ok(attached)
}

/// Start (unless resuming) and run a decryption of the LUKS2 volume `v2`.
pub(super) fn decrypt_v2(
    t: &Target,
    req: &ReencryptRequest,
    v2: &mut Luks2Volume,
    data: Arc<dyn BlockDriver>,
    pass: &[u8],
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    let mut started = false;
    let old_key = match v2.reencrypt_state()? {
        Some(st) => {
            let Some(old_digest) = st.old_digest.filter(|_| st.keyslot.mode == "decrypt") else {
                bail!(
                    Usage,
                    "{}: a LUKS2 reencryption of mode \"{}\" is in progress, not a decryption \
                     (resume it without --decrypt)",
                    t.device,
                    st.keyslot.mode
                );
            };
            match v2.unlock_digest(pass, old_digest) {
                Ok(k) => k,
                Err(e) if e.kind() == ErrorKind::WrongKey => {
                    // cryptsetup was stopped while removing the key slots after the
                    // last hotzone: a slot is gone from the metadata, or its material
                    // is wiped while the metadata still lists it. With all data
                    // plaintext no key is needed (decrypt_finish_done checks that);
                    // otherwise, with slots still listed, the passphrase is wrong.
                    let listed = old_key_listed(v2, Some(old_digest))?;
                    let total = v2
                        .decrypt_finish_done(data.as_ref())
                        .map_err(|f| if listed { e } else { f })?;
                    return Ok(finished_report(total));
                }
                Err(e) => return Err(e),
            }
        }
        None => {
            let old = unlock_to_start(t, req, v2, pass)?;
            let resilience =
                ResilienceChoice::from_name(req.resilience.as_deref().unwrap_or("checksum"))?;
            let p = DecryptParams {
                resilience,
                hash: resilience.hash(req.resilience_hash.as_deref())?,
                digest_iterations: req.keyslot.iterations,
            };
            v2.decrypt_init(data.as_ref(), &old.volume_key, &p)?;
            started = true;
            old.volume_key
        }
    };
    if req.resilience.is_some() && !started {
        events.warning("the resilience of a decryption in progress is kept as stored");
    }
    if v2.shift_decrypt_state()?.is_some() {
        if req.hotzone_size.is_some() && !started {
            // Its hotzones are the data shift and its moved segment is already stored.
            events.warning(
                "--hotzone-size has no effect when resuming a decryption that moves the header: \
                 its hotzones are the data shift",
            );
        }
        return super::decrypt_shift::run(v2, data, &old_key, req, started, events);
    }
    let mut d = Decryption::load(v2, data, &old_key, req.hotzone_size)?;
    drive(&mut d, req, started, events)
}

/// A decryption runner of either kind (detached header, or data shift).
pub(super) trait Runner {
    fn position(&self) -> Result<Position>;
    fn run(&mut self, progress: &mut dyn FnMut(Position), go: &dyn Fn() -> bool) -> Result<bool>;
}

impl Runner for Decryption<'_> {
    fn position(&self) -> Result<Position> {
        Decryption::position(self)
    }
    fn run(&mut self, p: &mut dyn FnMut(Position), go: &dyn Fn() -> bool) -> Result<bool> {
        Decryption::run(self, p, go)
    }
}

impl Runner for ShiftDecryption<'_> {
    fn position(&self) -> Result<Position> {
        ShiftDecryption::position(self)
    }
    fn run(&mut self, p: &mut dyn FnMut(Position), go: &dyn Fn() -> bool) -> Result<bool> {
        ShiftDecryption::run(self, p, go)
    }
}

/// Run `d` (unless `--init-only`) with progress to `events`; the report.
pub(super) fn drive(
    d: &mut dyn Runner,
    req: &ReencryptRequest,
    started: bool,
    events: &mut dyn Events,
) -> Result<ReencryptReport> {
    let start = d.position()?;
    if req.init_only {
        return Ok(report(started, false, start));
    }
    let finished = run_steps(events, start, req.max_hotzones, &mut |p, k| d.run(p, k))?;
    let position = end_position(finished, start, || d.position())?;
    Ok(report(started, finished, position))
}

fn report(started: bool, finished: bool, position: Position) -> ReencryptReport {
    ReencryptReport {
        started,
        finished,
        position,
        new_slot: None,
    }
}
