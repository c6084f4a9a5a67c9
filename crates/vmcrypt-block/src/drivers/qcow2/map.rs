//! `qemu-img map` for qcow2: how each run of guest bytes is stored, through the backing
//! chain.
//!
//! A run is a sequence of units (clusters or subclusters) of one kind: data, compressed,
//! zero, or unallocated. Data, preallocated zero clusters and (with extended L2)
//! unallocated subclusters of an allocated cluster carry a host offset, as in QEMU, as
//! long as the image is not encrypted; a run with host offsets only continues while they
//! are contiguous. Unallocated runs are answered by the backing node one layer deeper.
use super::Qcow2Driver;
use super::engine::{ClusterMap, skip_table_holes};
use crate::driver::{Allocation, HostRange, MapExtent, check_range, map_extent};
use vmcrypt_error::Result;
use vmcrypt_format::qcow2::Mapping;
use vmcrypt_format::qcow2::table::ClusterKind;

/// The kind of one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Data,
    Compressed,
    Zero,
    Unallocated,
}

/// One unit: its kind and, where QEMU reports one, the host offset of its first byte.
#[derive(Clone, Copy, Debug)]
struct Unit {
    kind: Kind,
    host: Option<u64>,
}

impl Qcow2Driver {
    /// [`HostMap::map_extent`](crate::driver::HostMap::map_extent) for qcow2 (see the module documentation).
    pub fn map_extent_impl(&self, offset: u64, len: u64) -> Result<MapExtent> {
        check_range("qcow2 map", offset, len as usize, self.header.size)?;
        let (unit, run) = self.map_run(offset, len)?;
        let host = unit.host.map(|h| HostRange {
            offset: h,
            file: self.engine.file.filename(),
        });
        let extent = |allocation, present, compressed, host| MapExtent {
            offset,
            length: run,
            allocation,
            present,
            depth: 0,
            compressed,
            host,
        };
        Ok(match unit.kind {
            Kind::Data => extent(Allocation::Data, true, false, host),
            Kind::Compressed => extent(Allocation::Data, true, true, None),
            Kind::Zero => extent(Allocation::Zero, true, false, host),
            Kind::Unallocated => match self.backing() {
                Some(b) if offset < b.size() => {
                    let e = map_extent(b.as_ref(), offset, run.min(b.size() - offset))?;
                    MapExtent {
                        offset,
                        depth: e.depth + 1,
                        ..e
                    }
                }
                _ => extent(Allocation::Zero, false, false, host),
            },
        })
    }

    /// The unit at `g` and the length (at most `max`) of the run of like units from it.
    fn map_run(&self, g: u64, max: u64) -> Result<(Unit, u64)> {
        let unit_size = 1u64 << self.unit_bits();
        let first = self.unit_at(g)?;
        let mut len = (unit_size - (g & (unit_size - 1))).min(max);
        if first.kind == Kind::Compressed {
            let cs = 1u64 << self.cluster_bits();
            let to_end = cs - (g & (cs - 1));
            return Ok((first, to_end.min(max)));
        }
        while len < max {
            if first.kind == Kind::Unallocated && first.host.is_none() {
                len = skip_table_holes(self, g, len, max)?;
                if len >= max {
                    break;
                }
            }
            let next = self.unit_at(g + len)?;
            let same = next.kind == first.kind
                && match (first.host, next.host) {
                    (None, None) => true,
                    (Some(h), Some(h2)) => h2 == h + len,
                    _ => false,
                };
            if !same {
                break;
            }
            len = (len + unit_size).min(max);
        }
        Ok((first, len))
    }

    /// The unit holding guest offset `g`, its host offset counted from `g`.
    fn unit_at(&self, g: u64) -> Result<Unit> {
        let cmask = (1u64 << self.cluster_bits()) - 1;
        let encrypted = self.engine.crypto.is_encrypted();
        let at = |cluster: u64| (cluster != 0 && !encrypted).then_some(cluster + (g & cmask));
        Ok(match self.map_unit(g)? {
            Mapping::Data(h) => Unit {
                kind: Kind::Data,
                host: at(h),
            },
            Mapping::Compressed(_) => Unit {
                kind: Kind::Compressed,
                host: None,
            },
            Mapping::Zero => Unit {
                kind: Kind::Zero,
                host: self.cluster_host(g)?.and_then(at),
            },
            Mapping::Backing => Unit {
                kind: Kind::Unallocated,
                host: self.cluster_host(g)?.and_then(at),
            },
        })
    }

    /// The host cluster the L2 entry for `g` names, if any (a zero cluster may keep its
    /// preallocated cluster; with extended L2, an unallocated subcluster may lie in an
    /// allocated cluster).
    fn cluster_host(&self, g: u64) -> Result<Option<u64>> {
        Ok(match self.l2_entry(g)?.kind {
            ClusterKind::Normal(o) | ClusterKind::Zero(o) if o != 0 => Some(o),
            _ => None,
        })
    }
}
