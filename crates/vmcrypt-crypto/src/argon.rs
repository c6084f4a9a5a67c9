//! Argon2i / Argon2id (RFC 9106) for LUKS2 key slots: derivation, limits for costs read
//! from untrusted headers, cryptsetup's defaults for new key slots, and time-based cost
//! calibration.
//!
//! The work is done by the RustCrypto `argon2` crate with its `parallel` feature, so the
//! lanes of one derivation run on several threads. We allocate the memory blocks
//! ourselves so that they are wiped when the derivation ends (they are key material).
//! LUKS2 uses Argon2 version 0x13 with no secret and no associated data, like
//! cryptsetup's libargon2 calls.
use std::time::{Duration, Instant};
use vmcrypt_error::{Error, Result, bail, ensure};
use zeroize::Zeroizing;

/// The Argon2 variants LUKS2 key slots use (LUKS2 has no Argon2d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Type {
    /// Data-independent memory access (`"argon2i"`).
    Argon2i,
    /// Hybrid: the first half pass data-independent, then data-dependent (`"argon2id"`).
    Argon2id,
}

impl Argon2Type {
    /// The type named by a LUKS2 keyslot's `kdf.type` (`"argon2i"` or `"argon2id"`).
    pub fn from_luks2_name(name: &str) -> Result<Self> {
        match name {
            "argon2i" => Ok(Argon2Type::Argon2i),
            "argon2id" => Ok(Argon2Type::Argon2id),
            _ => bail!(
                Unsupported,
                "unknown Argon2 type {name:?} (expected \"argon2i\" or \"argon2id\")"
            ),
        }
    }

    /// The LUKS2 JSON name: `"argon2i"` or `"argon2id"`.
    pub fn luks2_name(self) -> &'static str {
        match self {
            Argon2Type::Argon2i => "argon2i",
            Argon2Type::Argon2id => "argon2id",
        }
    }

    /// The name `cryptsetup benchmark` prints ("Argon2i", "Argon2id").
    pub fn display_name(self) -> &'static str {
        match self {
            Argon2Type::Argon2i => "Argon2i",
            Argon2Type::Argon2id => "Argon2id",
        }
    }

    fn algorithm(self) -> argon2::Algorithm {
        match self {
            Argon2Type::Argon2i => argon2::Algorithm::Argon2i,
            Argon2Type::Argon2id => argon2::Algorithm::Argon2id,
        }
    }
}

/// Argon2 costs as a LUKS2 keyslot stores them (`time`, `memory`, `cpus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Cost {
    /// Number of passes over memory (t), at least 1.
    pub time: u32,
    /// Memory in KiB (m), at least 8 x `lanes`; Argon2 rounds it down to a multiple of
    /// 4 x `lanes`.
    pub memory_kib: u32,
    /// Degree of parallelism (p), at least 1. Lanes run on up to this many threads.
    pub lanes: u32,
}

impl Argon2Cost {
    /// time x memory: the work of one derivation in KiB-passes (what calibration scales).
    pub fn work(&self) -> u64 {
        u64::from(self.time) * u64::from(self.memory_kib)
    }
}

/// The smallest salt libargon2 and the `argon2` crate accept.
pub const MIN_SALT_LEN: usize = 8;

/// The smallest output Argon2 produces.
pub const MIN_OUTPUT_LEN: usize = 4;

/// Derive `out.len()` bytes with Argon2 (version 0x13, no secret, no associated data:
/// what cryptsetup/libargon2 use for LUKS2).
///
/// Invalid costs or lengths (time 0, lanes 0, memory below 8 x lanes, a salt shorter
/// than 8 bytes, fewer than 4 output bytes) are [`ErrorKind::Corrupt`](vmcrypt_error::ErrorKind::Corrupt); memory that
/// cannot be allocated is [`ErrorKind::LimitExceeded`](vmcrypt_error::ErrorKind::LimitExceeded). This function applies no
/// [`KdfLimits`]: call [`KdfLimits::check_argon2`] first for costs from a header.
pub fn argon2(
    ty: Argon2Type,
    password: &[u8],
    salt: &[u8],
    cost: Argon2Cost,
    out: &mut [u8],
) -> Result<()> {
    check_inputs(cost, salt, out.len())?;
    let params = argon2::Params::new(cost.memory_kib, cost.time, cost.lanes, Some(out.len()))
        .map_err(|e| invalid(cost, e))?;
    let ctx = argon2::Argon2::new(ty.algorithm(), argon2::Version::V0x13, params);
    let mut blocks = alloc_blocks(ctx.params().block_count(), cost)?;
    ctx.hash_password_into_with_memory(password, salt, out, &mut blocks[..])
        .map_err(|e| invalid(cost, e))
}

/// Our own checks, so the messages name the bad value.
fn check_inputs(cost: Argon2Cost, salt: &[u8], out_len: usize) -> Result<()> {
    ensure!(
        cost.time >= 1,
        Corrupt,
        "Argon2 time cost 0 (must be at least 1)"
    );
    ensure!(
        cost.lanes >= 1,
        Corrupt,
        "Argon2 parallel cost 0 (must be at least 1)"
    );
    ensure!(
        u64::from(cost.memory_kib) >= 8 * u64::from(cost.lanes),
        Corrupt,
        "Argon2 memory cost {} KiB is below 8 KiB x {} lanes",
        cost.memory_kib,
        cost.lanes
    );
    ensure!(
        salt.len() >= MIN_SALT_LEN,
        Corrupt,
        "Argon2 salt of {} bytes is shorter than {MIN_SALT_LEN}",
        salt.len()
    );
    ensure!(
        out_len >= MIN_OUTPUT_LEN,
        Corrupt,
        "Argon2 output of {out_len} bytes is shorter than {MIN_OUTPUT_LEN}"
    );
    Ok(())
}

fn invalid(cost: Argon2Cost, e: argon2::Error) -> Error {
    Error::corrupt(format!(
        "Argon2 (t={}, m={} KiB, p={}) failed: {e}",
        cost.time, cost.memory_kib, cost.lanes
    ))
}

/// `count` zeroed 1 KiB blocks, wiped on drop; an allocation failure is an error, not an
/// abort.
fn alloc_blocks(count: usize, cost: Argon2Cost) -> Result<Zeroizing<Vec<argon2::Block>>> {
    let mut v = Vec::new();
    if v.try_reserve_exact(count).is_err() {
        bail!(
            LimitExceeded,
            "cannot allocate {} KiB of memory for Argon2",
            cost.memory_kib
        );
    }
    v.resize(count, argon2::Block::new());
    Ok(Zeroizing::new(v))
}

/// Limits for KDF costs read from untrusted headers. Costs above them are refused with
/// [`ErrorKind::LimitExceeded`](vmcrypt_error::ErrorKind::LimitExceeded) before any work is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfLimits {
    /// Largest Argon2 memory cost in KiB. Default 4194304 (4 GiB), cryptsetup's maximum.
    pub max_memory_kib: u32,
    /// Largest Argon2 time cost (passes). Default 1000: with the 4 GiB memory maximum that
    /// is 4 x 10^9 KiB-passes, about 45 minutes on one core at the ~0.65 us per KiB-pass
    /// measured on the development machine, less with several lanes: long, but not
    /// hours. cryptsetup's calibration at its default 1 GiB gives 4 to a few tens.
    /// A legitimate header made with a tiny `--pbkdf-memory` and a long `--iter-time` can
    /// need more: raise this limit for headers you trust.
    pub max_time: u32,
    /// Largest Argon2 parallel cost (lanes). Default 16.
    pub max_lanes: u32,
    /// Largest PBKDF2 iteration count. Default 100 million, matching
    /// `vmcrypt_format::luks1::Limits`.
    pub max_pbkdf2_iterations: u32,
    /// Largest total KDF cost of one unlock attempt over all the key slots it tries, in
    /// multiples of the costliest slot the per-slot caps allow (a PBKDF2 slot at
    /// `max_pbkdf2_iterations`, an Argon2 slot at `max_memory_kib` x `max_time`).
    /// Default 4. A slot that would take the total over it is skipped (see
    /// [`UnlockBudget`]); a slot named explicitly is always tried.
    pub max_unlock_cost: u32,
}

impl Default for KdfLimits {
    fn default() -> Self {
        KdfLimits {
            max_memory_kib: 4 * 1024 * 1024,
            max_time: 1000,
            max_lanes: 16,
            max_pbkdf2_iterations: 100_000_000,
            max_unlock_cost: 4,
        }
    }
}

impl KdfLimits {
    /// Refuse `cost` if any of its values is above these limits.
    pub fn check_argon2(&self, cost: Argon2Cost) -> Result<()> {
        let over = |what: &str, value: u32, max: u32, field: &str| {
            Error::limit(format!(
                "Argon2 {what} {value} exceeds the limit {max}; if you trust this header, \
                 raise the limit ({field})"
            ))
        };
        if cost.memory_kib > self.max_memory_kib {
            return Err(over(
                "memory cost (KiB)",
                cost.memory_kib,
                self.max_memory_kib,
                "vmcrypt --max-kdf-memory, KdfLimits::max_memory_kib",
            ));
        }
        if cost.time > self.max_time {
            return Err(over(
                "time cost",
                cost.time,
                self.max_time,
                "vmcrypt --max-kdf-time, KdfLimits::max_time",
            ));
        }
        if cost.lanes > self.max_lanes {
            return Err(over(
                "parallel cost (lanes)",
                cost.lanes,
                self.max_lanes,
                "max_lanes",
            ));
        }
        Ok(())
    }

    /// Refuse a PBKDF2 iteration count above [`KdfLimits::max_pbkdf2_iterations`].
    pub fn check_pbkdf2(&self, iterations: u32) -> Result<()> {
        ensure!(
            iterations <= self.max_pbkdf2_iterations,
            LimitExceeded,
            "PBKDF2 iteration count {iterations} exceeds the limit {}; if you trust this \
             header, raise the limit (vmcrypt --max-pbkdf2-iterations, \
             KdfLimits::max_pbkdf2_iterations)",
            self.max_pbkdf2_iterations
        );
        Ok(())
    }
}

/// What one key slot's unlock try costs: the PBKDF2 iterations it runs (slot and digest)
/// and its Argon2 work (memory KiB x passes, 0 for PBKDF2 slots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCost {
    /// PBKDF2 iterations (the slot's KDF if PBKDF2, plus the volume-key digest's).
    pub pbkdf2_iterations: u64,
    /// Argon2 memory (KiB) x time of the slot's KDF, 0 if it is PBKDF2.
    pub argon2_work: u64,
}

/// The KDF cost one unlock attempt may still spend on the slots it tries in turn
/// ([`KdfLimits::max_unlock_cost`]), and the slots it skipped because they did not fit.
/// The per-slot caps bound one slot; this bounds a header with many slots at the caps.
#[derive(Debug)]
pub struct UnlockBudget {
    /// Cost left, in the same units as [`KdfLimits::max_unlock_cost`].
    left: f64,
    max: u32,
    pbkdf2_unit: f64,
    argon2_unit: f64,
    skipped: Vec<u32>,
}

impl UnlockBudget {
    /// A full budget for one unlock attempt under `limits`.
    pub fn new(limits: &KdfLimits) -> Self {
        let argon2_unit = u64::from(limits.max_memory_kib) * u64::from(limits.max_time);
        UnlockBudget {
            left: f64::from(limits.max_unlock_cost),
            max: limits.max_unlock_cost,
            pbkdf2_unit: limits.max_pbkdf2_iterations.max(1) as f64,
            argon2_unit: argon2_unit.max(1) as f64,
            skipped: Vec::new(),
        }
    }

    /// Spend `cost` on slot `id` if it fits in what is left and return true; otherwise
    /// remember `id` as skipped and return false.
    pub fn charge(&mut self, id: u32, cost: SlotCost) -> bool {
        let units = cost.pbkdf2_iterations as f64 / self.pbkdf2_unit
            + cost.argon2_work as f64 / self.argon2_unit;
        if units > self.left {
            self.skipped.push(id);
            return false;
        }
        self.left -= units;
        true
    }

    /// The error for an unlock in which no slot tried took the passphrase: `WrongKey` if
    /// every slot was tried, `LimitExceeded` naming the skipped slots if some were not.
    pub fn no_key(&self) -> Error {
        if self.skipped.is_empty() {
            return Error::wrong_key("no key available with this passphrase");
        }
        let ids: Vec<String> = self.skipped.iter().map(u32::to_string).collect();
        Error::limit(format!(
            "no key available with this passphrase in the key slots tried; key slot(s) {} \
             were not tried: with them this unlock would cost more than {} times the \
             per-slot KDF caps; name a slot with --key-slot, or if you trust this header \
             raise the budget (vmcrypt --max-unlock-cost, KdfLimits::max_unlock_cost)",
            ids.join(", "),
            self.max
        ))
    }
}

/// cryptsetup's default Argon2 memory cost for new key slots.
pub const DEFAULT_MEMORY_KIB: u32 = 1024 * 1024;

/// cryptsetup's default maximum Argon2 lanes for new key slots.
pub const DEFAULT_MAX_LANES: u32 = 4;

/// cryptsetup's default memory for new keyslots: min(1 GiB, half of physical RAM), in
/// KiB. Physical RAM is `MemTotal` from `/proc/meminfo`; if that cannot be read, 1 GiB.
pub fn default_argon2_memory_kib() -> u32 {
    let half = physical_memory_kib().map_or(u64::MAX, |kib| kib / 2);
    u32::try_from(half.min(u64::from(DEFAULT_MEMORY_KIB))).unwrap_or(DEFAULT_MEMORY_KIB)
}

/// cryptsetup's default lanes for new keyslots: min(4, online CPUs).
pub fn default_argon2_lanes() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cpus).map_or(DEFAULT_MAX_LANES, |c| c.clamp(1, DEFAULT_MAX_LANES))
}

/// `MemTotal` in KiB from `/proc/meminfo`, if readable.
fn physical_memory_kib() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The `MemTotal:  N kB` value of a `/proc/meminfo` text.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        _ => None,
    }
}

/// The smallest time cost calibration returns (cryptsetup's minimum for Argon2).
pub const CALIBRATION_MIN_TIME: u32 = 4;

/// The memory floor calibration lowers to before giving up on the target (32 MiB).
pub const CALIBRATION_MIN_MEMORY_KIB: u32 = 32 * 1024;

/// Largest number of measured runs [`calibrate_argon2`] makes.
const MAX_TRIALS: usize = 6;

/// A run at least this fraction of the target is trusted: the result is extrapolated
/// from it without another run.
const TRUSTED_FRACTION: f64 = 0.3;

/// The most a trial grows the work over the previous (short, noisy) run.
const MAX_GROWTH: f64 = 64.0;

/// Calibrate Argon2 costs by time, like cryptsetup: the time cost starts at the minimum
/// 4 and memory at `max_memory_kib`. If a run at that memory takes longer than `target`,
/// memory is lowered proportionally (down to 32 MiB, or `max_memory_kib` if that is
/// smaller); otherwise the time cost is raised until a run takes about `target`.
///
/// Few runs are made (typically three, together about half of `target`): a cheap first
/// run at a small memory, then runs aimed at half the target (the time per KiB grows
/// with memory once it leaves the CPU caches, so a full jump could overshoot) until one
/// takes at least 30% of `target`; the result is extrapolated from that run (the work
/// time x memory scales the run time), as cryptsetup's benchmark does. Lanes are
/// `lanes` (at least 1); `key_len` is the derived key size the runs produce.
pub fn calibrate_argon2(
    ty: Argon2Type,
    target: Duration,
    max_memory_kib: u32,
    lanes: u32,
    key_len: usize,
) -> Argon2Cost {
    let lanes = lanes.max(1);
    let password = b"vmcrypt argon2 benchmark";
    let salt = [0x5au8; 32];
    let mut out = Zeroizing::new(vec![0u8; key_len.max(MIN_OUTPUT_LEN)]);
    let measure = |cost: Argon2Cost| {
        let start = Instant::now();
        // The costs are valid by construction (clamped in `Bounds`).
        let _ = argon2(ty, password, &salt, cost, &mut out);
        start.elapsed()
    };
    calibrate_with(measure, target, max_memory_kib, lanes)
}

/// The memory range calibration may choose from, for `lanes` lanes.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    min_memory: u32,
    max_memory: u32,
    lanes: u32,
}

impl Bounds {
    fn new(max_memory_kib: u32, lanes: u32) -> Self {
        let least = lanes.saturating_mul(8);
        let max_memory = max_memory_kib.max(least);
        let min_memory = CALIBRATION_MIN_MEMORY_KIB.clamp(least, max_memory);
        Bounds {
            min_memory,
            max_memory,
            lanes,
        }
    }

    /// The cost doing about `work` KiB-passes: the minimum time at the memory that gives
    /// it (within the bounds), or the maximum memory with as many passes as needed.
    fn cost_for(&self, work: f64) -> Argon2Cost {
        let min_t = f64::from(CALIBRATION_MIN_TIME);
        let mut cost = Argon2Cost {
            time: CALIBRATION_MIN_TIME,
            memory_kib: self.max_memory,
            lanes: self.lanes,
        };
        let memory = work / min_t;
        if memory <= f64::from(self.max_memory) {
            cost.memory_kib = (memory as u32).clamp(self.min_memory, self.max_memory);
        } else {
            let time = (work / f64::from(self.max_memory)).round();
            cost.time = (time.min(f64::from(u32::MAX)) as u32).max(CALIBRATION_MIN_TIME);
        }
        cost
    }
}

/// The calibration loop over a measuring function (so tests can use a model clock).
fn calibrate_with<M: FnMut(Argon2Cost) -> Duration>(
    mut measure: M,
    target: Duration,
    max_memory_kib: u32,
    lanes: u32,
) -> Argon2Cost {
    let bounds = Bounds::new(max_memory_kib, lanes);
    let target_s = target.as_secs_f64().max(1e-6);
    // First trial: the minimum time at a small memory (cheap, a few milliseconds).
    let mut cost = bounds.cost_for(f64::from(CALIBRATION_MIN_TIME) * 8.0 * 1024.0);
    cost.memory_kib = cost.memory_kib.min(8 * 1024).max(lanes.saturating_mul(8));
    for _ in 0..MAX_TRIALS {
        let took = measure(cost).as_secs_f64().max(1e-6);
        let ratio = target_s / took;
        if ratio <= 1.0 / TRUSTED_FRACTION {
            return bounds.cost_for(cost.work() as f64 * ratio);
        }
        let next = bounds.cost_for(cost.work() as f64 * (ratio / 2.0).min(MAX_GROWTH));
        if next == cost {
            break;
        }
        cost = next;
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmcrypt_error::ErrorKind;

    #[test]
    fn luks2_names_round_trip() {
        for ty in [Argon2Type::Argon2i, Argon2Type::Argon2id] {
            assert_eq!(Argon2Type::from_luks2_name(ty.luks2_name()).unwrap(), ty);
        }
        let e = Argon2Type::from_luks2_name("argon2d").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("argon2d"), "{e}");
    }

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       24683656 kB\nMemFree:  100 kB\n";
        assert_eq!(parse_mem_total(text), Some(24683656));
        assert_eq!(parse_mem_total("MemFree: 5 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 5 MB\n"), None);
    }

    #[test]
    fn defaults_follow_cryptsetup() {
        let m = default_argon2_memory_kib();
        assert!(m <= DEFAULT_MEMORY_KIB && m > 0, "{m}");
        if let Some(total) = physical_memory_kib() {
            assert_eq!(u64::from(m), (total / 2).min(u64::from(DEFAULT_MEMORY_KIB)));
        }
        let p = default_argon2_lanes();
        let cpus = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(p, cpus.min(4));
    }

    /// A model machine: a run takes `ns_per_kib_pass` per KiB-pass, plus a fixed 1 ms.
    fn model(ns_per_kib_pass: f64) -> impl FnMut(Argon2Cost) -> Duration {
        move |c: Argon2Cost| {
            Duration::from_secs_f64(c.work() as f64 * ns_per_kib_pass * 1e-9 + 1e-3)
        }
    }

    #[test]
    fn calibration_raises_time_at_max_memory_on_a_fast_machine() {
        // 250 ns per KiB-pass: 4 passes over 64 MiB take ~66 ms, so a 2 s target needs
        // about 120 passes at 64 MiB.
        let mut runs = 0;
        let mut m = model(0.25e3);
        let cost = calibrate_with(
            |c| {
                runs += 1;
                m(c)
            },
            Duration::from_secs(2),
            64 * 1024,
            2,
        );
        assert_eq!(cost.memory_kib, 64 * 1024);
        assert_eq!(cost.lanes, 2);
        let took = model(0.25e3)(cost).as_secs_f64();
        assert!((1.8..=2.2).contains(&took), "{cost:?} takes {took}");
        assert!(runs <= 5, "{runs} trial runs");
    }

    #[test]
    fn calibration_lowers_memory_on_a_slow_machine() {
        // 100 ns per KiB-pass: 4 passes over 1 GiB take 0.42 s; 100 ms allows about
        // 10^6 KiB-passes -> about 240 MiB at t = 4.
        let cost = calibrate_with(model(100.0), Duration::from_millis(100), 1 << 20, 4);
        assert_eq!(cost.time, CALIBRATION_MIN_TIME);
        let took = model(100.0)(cost).as_secs_f64();
        assert!((0.09..=0.11).contains(&took), "{cost:?} takes {took}");
        // Far slower still: memory stops at the 32 MiB floor.
        let cost = calibrate_with(model(1e5), Duration::from_millis(100), 1 << 20, 4);
        assert_eq!(
            (cost.time, cost.memory_kib),
            (4, CALIBRATION_MIN_MEMORY_KIB)
        );
    }

    #[test]
    fn calibration_respects_tiny_memory_maximum_and_lanes() {
        let cost = calibrate_with(model(1e3), Duration::from_millis(50), 1024, 4);
        assert_eq!(cost.memory_kib, 1024);
        assert!(cost.time >= CALIBRATION_MIN_TIME);
        // Memory can never go below 8 KiB per lane.
        let cost = calibrate_with(model(1e9), Duration::from_millis(1), 8, 4);
        assert_eq!(cost.memory_kib, 32);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let ok = Argon2Cost {
            time: 1,
            memory_kib: 64,
            lanes: 2,
        };
        let mut out = [0u8; 32];
        let salt = [0u8; 16];
        let cases = [
            (Argon2Cost { time: 0, ..ok }, &salt[..], 32, "time cost 0"),
            (
                Argon2Cost { lanes: 0, ..ok },
                &salt[..],
                32,
                "parallel cost 0",
            ),
            (
                Argon2Cost {
                    memory_kib: 15,
                    ..ok
                },
                &salt[..],
                32,
                "15 KiB",
            ),
            (ok, &salt[..7], 32, "salt of 7 bytes"),
            (ok, &salt[..], 3, "output of 3 bytes"),
        ];
        for (cost, salt, len, msg) in cases {
            let e = argon2(Argon2Type::Argon2id, b"pw", salt, cost, &mut out[..len]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            assert!(e.to_string().contains(msg), "{e} lacks {msg}");
        }
        argon2(Argon2Type::Argon2id, b"pw", &salt, ok, &mut out).unwrap();
    }
}
