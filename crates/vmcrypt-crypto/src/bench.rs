//! In-process throughput measurements for `vmcrypt bench` (like `cryptsetup benchmark`)
//! and the `xts_speed` example: run a closure over a buffer repeatedly for a minimum
//! time (wall-clock, or a given clock), several times, and report the median rate.
use std::time::{Duration, Instant};

/// The result of [`throughput`]: bytes per second of each run, and their median.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    /// Median over the runs, in bytes per second.
    pub median: f64,
    /// Every run's rate in bytes per second, sorted ascending.
    pub runs: Vec<f64>,
}

impl Throughput {
    /// The median in MB/s (10^6 bytes per second, as `openssl speed` counts).
    pub fn mb_per_sec(&self) -> f64 {
        self.median / 1e6
    }

    /// The median in MiB/s (2^20 bytes per second, as `cryptsetup benchmark` prints).
    pub fn mib_per_sec(&self) -> f64 {
        self.median / (1024.0 * 1024.0)
    }
}

/// Measure how fast `f` processes `buf`, by wall-clock time.
///
/// Each of `runs` runs (at least one) calls `f(buf)` repeatedly until `min_time` has
/// passed (at least once) and counts `buf.len()` bytes per call; the result holds each
/// run's rate and their median. One untimed call warms caches and lazy initialisation
/// first. `f` may change `buf` (encrypting in place repeatedly is fine).
pub fn throughput<F: FnMut(&mut [u8])>(
    buf: &mut [u8],
    runs: usize,
    min_time: Duration,
    f: F,
) -> Throughput {
    let origin = Instant::now();
    throughput_by(move || origin.elapsed(), buf, runs, min_time, f)
}

/// [`throughput`] measured with another monotonic clock (`clock()` returns the time
/// since any fixed origin), e.g. a CPU-time clock.
pub fn throughput_by<C: FnMut() -> Duration, F: FnMut(&mut [u8])>(
    mut clock: C,
    buf: &mut [u8],
    runs: usize,
    min_time: Duration,
    mut f: F,
) -> Throughput {
    f(buf);
    let mut rates: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = clock();
            let mut calls = 0u64;
            loop {
                f(buf);
                calls += 1;
                let elapsed = clock().saturating_sub(start);
                if elapsed >= min_time {
                    break calls as f64 * buf.len() as f64 / elapsed.as_secs_f64().max(1e-9);
                }
            }
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    Throughput {
        median: median(&rates),
        runs: rates,
    }
}

/// The median of sorted values (the mean of the middle two for an even count; 0 if empty).
pub fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
    }

    #[test]
    fn throughput_counts_bytes_over_time() {
        let mut buf = vec![0u8; 1000];
        let mut calls = 0;
        let t = throughput(&mut buf, 3, Duration::from_millis(5), |b| {
            calls += 1;
            std::thread::sleep(Duration::from_millis(1));
            b[0] = b[0].wrapping_add(1);
        });
        assert_eq!(t.runs.len(), 3);
        assert!(
            calls >= 4,
            "warm-up plus at least one call per run: {calls}"
        );
        // At least 1 ms per 1000-byte call: at most 1 MB/s, and clearly more than 0.
        assert!(t.median > 0.0 && t.median <= 1.0e6, "{}", t.median);
        assert!(t.runs.windows(2).all(|w| w[0] <= w[1]));
        assert!((t.mb_per_sec() - t.median / 1e6).abs() < 1e-9);
    }

    #[test]
    fn throughput_by_uses_the_given_clock() {
        // A fake clock advancing 1 ms per reading: a run reads it once at the start and
        // once after each call, so 10 ms pass in 10 calls of 100 bytes: 100 kB/s.
        let mut now = Duration::ZERO;
        let clock = || {
            now += Duration::from_millis(1);
            now
        };
        let t = throughput_by(clock, &mut [0u8; 100], 1, Duration::from_millis(10), |_| {});
        assert_eq!(t.runs.len(), 1);
        assert!((t.median - 100_000.0).abs() < 1e-6, "{}", t.median);
    }
}
