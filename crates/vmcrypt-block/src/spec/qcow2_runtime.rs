//! The qcow2 driver's run-time options as QEMU names them: the metadata cache sizes
//! (`cache-size`, `l2-cache-size`, `refcount-cache-size`, `l2-cache-entry-size`,
//! `cache-clean-interval`), checked with QEMU's rules and messages, and the options that
//! tune QEMU's write path (`lazy-refcounts`, `pass-discard-*`, `discard-no-unref`,
//! `overlap-check`), accepted, kept as given and printed back.
//!
//! The L2 table cache of an open image is sized from these ([`CacheSpec::l2_tables`]);
//! vmcrypt caches whole L2 tables, so `l2-cache-entry-size` is checked but does not
//! change the cache's granularity.
use crate::opts::opt_u64;
use serde_json::{Map, Value};
use vmcrypt_error::{Result, bail};

/// The cache options.
pub const CACHE_OPTIONS: &[&str] = &[
    "cache-size",
    "l2-cache-size",
    "refcount-cache-size",
    "l2-cache-entry-size",
    "cache-clean-interval",
];

/// QEMU's write-path options, accepted and printed back.
pub const WRITE_PATH_OPTIONS: &[&str] = &[
    "lazy-refcounts",
    "pass-discard-request",
    "pass-discard-snapshot",
    "pass-discard-other",
    "discard-no-unref",
    "overlap-check",
];

/// The L2 cache when no option sizes it: enough for the whole disk, at most 32 MiB
/// (QEMU's default on Linux).
const DEFAULT_L2_CACHE_MAX: u64 = 32 << 20;
/// At most this many tables without an explicit size (eviction scans them all).
const DEFAULT_MAX_TABLES: u64 = 1024;
/// The refcount cache QEMU keeps at least when it splits `cache-size`: 4 clusters.
const MIN_REFCOUNT_CLUSTERS: u64 = 4;

/// The cache options of one qcow2 node, as given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheSpec {
    pub cache_size: Option<u64>,
    pub l2_cache_size: Option<u64>,
    pub refcount_cache_size: Option<u64>,
    pub l2_cache_entry_size: Option<u64>,
    pub cache_clean_interval: Option<u64>,
    /// [`WRITE_PATH_OPTIONS`] as given.
    pub write_path: Map<String, Value>,
}

impl CacheSpec {
    /// Read the options of `o` (types only: the rules that need the image are checked
    /// by [`CacheSpec::l2_tables`] when it is opened).
    pub(crate) fn parse(o: &Map<String, Value>) -> Result<CacheSpec> {
        let interval = opt_u64(o, "cache-clean-interval")?;
        if interval.is_some_and(|i| i > u64::from(u32::MAX)) {
            bail!(Usage, "Cache clean interval too big");
        }
        Ok(CacheSpec {
            cache_size: opt_u64(o, "cache-size")?,
            l2_cache_size: opt_u64(o, "l2-cache-size")?,
            refcount_cache_size: opt_u64(o, "refcount-cache-size")?,
            l2_cache_entry_size: opt_u64(o, "l2-cache-entry-size")?,
            cache_clean_interval: interval,
            write_path: o
                .iter()
                .filter(|(k, _)| WRITE_PATH_OPTIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    pub(crate) fn write_options(&self, m: &mut Map<String, Value>) {
        let sizes = [
            ("cache-size", self.cache_size),
            ("l2-cache-size", self.l2_cache_size),
            ("refcount-cache-size", self.refcount_cache_size),
            ("l2-cache-entry-size", self.l2_cache_entry_size),
            ("cache-clean-interval", self.cache_clean_interval),
        ];
        for (k, v) in sizes {
            if let Some(v) = v {
                m.insert(k.into(), Value::from(v));
            }
        }
        m.extend(self.write_path.clone());
    }

    /// How many L2 tables to keep for an image of `disk_size` bytes with clusters of
    /// `cluster_size` bytes and L2 entries of `entry_bytes` (8, or 16 with extended L2),
    /// after QEMU's checks of the options against each other and the image.
    pub fn l2_tables(&self, disk_size: u64, cluster_size: u64, entry_bytes: u64) -> Result<usize> {
        if let Some(e) = self.l2_cache_entry_size
            && (!e.is_power_of_two() || e < 512 || e > cluster_size)
        {
            bail!(
                Usage,
                "L2 cache entry size must be a power of two between 512 and the cluster size ({cluster_size})"
            );
        }
        // The cache that maps the whole disk.
        let entries = disk_size.div_ceil(cluster_size);
        let whole = entries
            .saturating_mul(entry_bytes)
            .div_ceil(cluster_size)
            .saturating_mul(cluster_size);
        let l2 = self.l2_bytes(whole, cluster_size)?;
        let tables = (l2.min(whole) / cluster_size).max(2);
        let cap = if self.explicit() {
            whole / cluster_size
        } else {
            DEFAULT_MAX_TABLES
        };
        Ok(tables.min(cap.max(2)) as usize)
    }

    fn explicit(&self) -> bool {
        self.l2_cache_size.is_some() || self.cache_size.is_some()
    }

    /// The L2 cache in bytes that the options ask for (QEMU's rules for splitting
    /// `cache-size` between the L2 and refcount caches).
    fn l2_bytes(&self, whole: u64, cluster_size: u64) -> Result<u64> {
        let default = whole.min(DEFAULT_L2_CACHE_MAX);
        let Some(total) = self.cache_size else {
            return Ok(self.l2_cache_size.unwrap_or(default));
        };
        match (self.l2_cache_size, self.refcount_cache_size) {
            (Some(_), Some(_)) => bail!(
                Usage,
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
            ),
            (Some(l2), None) if l2 > total => {
                bail!(Usage, "l2-cache-size may not exceed cache-size")
            }
            (Some(l2), None) => Ok(l2),
            (None, Some(r)) if r > total => {
                bail!(Usage, "refcount-cache-size may not exceed cache-size")
            }
            (None, Some(r)) => Ok(total - r),
            (None, None) => {
                let min_refcount = MIN_REFCOUNT_CLUSTERS * cluster_size;
                if total >= whole.saturating_add(min_refcount) {
                    Ok(whole)
                } else {
                    Ok(total - total.min(min_refcount))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> CacheSpec {
        CacheSpec::parse(v.as_object().unwrap()).unwrap()
    }

    const C: u64 = 65536;
    const GIB: u64 = 1 << 30;

    #[test]
    fn default_covers_the_disk_up_to_32_mib() {
        let s = CacheSpec::default();
        // 1 GiB: 16384 entries of 8 bytes = 2 tables.
        assert_eq!(s.l2_tables(GIB, C, 8).unwrap(), 2);
        // 64 GiB: 128 tables (8 MiB); 1 TiB would want 2048 (128 MiB): capped at
        // 32 MiB = 512 tables.
        assert_eq!(s.l2_tables(64 * GIB, C, 8).unwrap(), 128);
        assert_eq!(s.l2_tables(1 << 40, C, 8).unwrap(), 512);
        // Extended L2 entries take twice the room.
        assert_eq!(s.l2_tables(64 * GIB, C, 16).unwrap(), 256);
        // 512-byte clusters: at most 1024 tables.
        assert_eq!(s.l2_tables(64 * GIB, 512, 8).unwrap(), 1024);
    }

    #[test]
    fn explicit_sizes_are_honoured_within_the_disk() {
        let s = spec(json!({"l2-cache-size": "1M"}));
        assert_eq!(s.l2_tables(1 << 40, C, 8).unwrap(), 16);
        let s = spec(json!({"l2-cache-size": "4G"}));
        assert_eq!(s.l2_tables(1 << 40, C, 8).unwrap(), 2048);
        assert_eq!(s.l2_tables(64 << 40, C, 8).unwrap(), 65536);
        let s = spec(json!({"l2-cache-size": 1}));
        assert_eq!(s.l2_tables(1 << 40, C, 8).unwrap(), 2);
        let s = spec(json!({"cache-size": "2M", "refcount-cache-size": "1M"}));
        assert_eq!(s.l2_tables(1 << 40, C, 8).unwrap(), 16);
        let s = spec(json!({"cache-size": "1G"}));
        assert_eq!(s.l2_tables(1 << 40, C, 8).unwrap(), 2048);
        let s = spec(json!({"cache-size": "1M"}));
        assert_eq!(s.l2_tables(1 << 40, C, 8).unwrap(), 12);
    }

    #[test]
    fn qemu_rules_and_messages() {
        let err = |v: Value| {
            let s = CacheSpec::parse(v.as_object().unwrap())?;
            s.l2_tables(GIB, C, 8)
        };
        let msg = |v: Value| err(v).unwrap_err().to_string();
        assert!(
            msg(
                json!({"cache-size": "1M", "l2-cache-size": "512K", "refcount-cache-size": "256K"})
            )
            .contains("may not be set at the same time")
        );
        assert!(
            msg(json!({"cache-size": "1M", "l2-cache-size": "2M"}))
                .contains("l2-cache-size may not exceed cache-size")
        );
        assert!(
            msg(json!({"cache-size": "1M", "refcount-cache-size": "2M"}))
                .contains("refcount-cache-size may not exceed cache-size")
        );
        assert!(
            msg(json!({"l2-cache-entry-size": 131072}))
                .contains("between 512 and the cluster size (65536)")
        );
        assert!(msg(json!({"l2-cache-entry-size": 1000})).contains("power of two"));
        assert!(msg(json!({"cache-clean-interval": "-1"})).contains("invalid size"));
        assert!(msg(json!({"cache-clean-interval": 5_000_000_000u64})).contains("too big"));
        assert!(err(json!({"l2-cache-entry-size": 512, "cache-clean-interval": 5})).is_ok());
    }

    #[test]
    fn printed_back_as_given() {
        let s =
            spec(json!({"l2-cache-size": "1M", "lazy-refcounts": "on", "overlap-check": "none"}));
        let mut m = Map::new();
        s.write_options(&mut m);
        assert_eq!(
            Value::Object(m),
            json!({"l2-cache-size": 1048576, "lazy-refcounts": "on", "overlap-check": "none"})
        );
    }
}
