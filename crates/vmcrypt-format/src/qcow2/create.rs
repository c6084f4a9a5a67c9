//! Layout planner for new qcow2 images: where the metadata of an empty image goes and
//! what its first cluster holds. Pure: options in, bytes and offsets out.
//!
//! The layout is QEMU's (`qemu-img create -f qcow2`): the header cluster 0, the refcount
//! table at cluster 1, the first refcount block at cluster 2, the L1 table from cluster 3
//! (absent for a zero-sized disk), any further refcount blocks the L1 table needs right
//! after it, then the LUKS header region (FDE) and the refcount blocks it needs. Every
//! metadata cluster has refcount 1. The file ends where the L1 table's bytes end (QEMU
//! does not pad it) unless clusters follow it.
use super::ext::{Extensions, FdeRegion, FeatureName};
use super::header::{
    COMPAT_LAZY_REFCOUNTS, CompressionType, CryptMethod, Header, INCOMPAT_COMPRESSION,
    INCOMPAT_EXTL2, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, V2_HEADER_LEN,
};
use vmcrypt_error::{Result, bail, ensure};

/// Header length QEMU writes for version 3 (104 bytes plus the compression type byte,
/// padded to 8).
pub const QEMU_V3_HEADER_LEN: u32 = 112;
/// Smallest cluster (log2) for which QEMU writes the feature name table.
pub const FEATURE_TABLE_MIN_CLUSTER_BITS: u32 = 13;
/// Longest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: usize = 1023;

/// What a new image looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSpec {
    /// Virtual disk size in bytes.
    pub size: u64,
    pub cluster_bits: u32,
    /// log2 of the refcount width in bits (0..=6; QEMU's default 4 = 16 bits).
    pub refcount_order: u32,
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`).
    pub version: u32,
    pub lazy_refcounts: bool,
    pub extended_l2: bool,
    pub compression_type: CompressionType,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Bytes of the LUKS header region (`crypt_method` 2) or `None` for no encryption.
    pub fde_len: Option<u64>,
}

impl CreateSpec {
    /// QEMU's defaults: v3, 64 KiB clusters, 16-bit refcounts, zlib, no backing file.
    pub fn new(size: u64) -> CreateSpec {
        CreateSpec {
            size,
            cluster_bits: 16,
            refcount_order: 4,
            version: 3,
            lazy_refcounts: false,
            extended_l2: false,
            compression_type: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            fde_len: None,
        }
    }

    fn check(&self) -> Result<()> {
        ensure!(
            (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&self.cluster_bits),
            Usage,
            "qcow2: cluster size must be a power of two between 512 and 2 MiB"
        );
        ensure!(
            self.refcount_order <= 6,
            Usage,
            "qcow2: refcount width must be a power of two up to 64 bits"
        );
        ensure!(
            self.version == 2 || self.version == 3,
            Usage,
            "qcow2: version must be 2 (compat=0.10) or 3 (compat=1.1)"
        );
        if self.version == 2 {
            ensure!(
                !self.lazy_refcounts,
                Usage,
                "qcow2: lazy refcounts need compat=1.1 or later"
            );
            ensure!(
                self.refcount_order == 4,
                Usage,
                "qcow2: different refcount widths than 16 bits need compat=1.1 or later"
            );
            ensure!(
                !self.extended_l2,
                Usage,
                "qcow2: extended L2 entries need compat=1.1 or later"
            );
            ensure!(
                self.compression_type == CompressionType::Zlib,
                Usage,
                "qcow2: compression types other than zlib need compat=1.1 or later"
            );
        }
        ensure!(
            !self.extended_l2 || self.cluster_bits >= 14,
            Usage,
            "qcow2: extended L2 entries need a cluster size of at least 16 KiB"
        );
        ensure!(
            self.size.is_multiple_of(512),
            Usage,
            "qcow2: image size {} must be a multiple of 512 bytes",
            self.size
        );
        ensure!(
            self.size <= i64::MAX as u64 / 2,
            Usage,
            "qcow2: image size {} is too large",
            self.size
        );
        if let Some(b) = &self.backing_file {
            ensure!(
                !b.is_empty() && b.len() <= MAX_BACKING_NAME,
                Usage,
                "qcow2: backing file name must be 1..{MAX_BACKING_NAME} bytes"
            );
        } else {
            ensure!(
                self.backing_format.is_none(),
                Usage,
                "qcow2: a backing format needs a backing file"
            );
        }
        Ok(())
    }

    /// L1 entries needed to map the whole disk.
    pub fn l1_size(&self) -> u64 {
        let l2_bits = self.cluster_bits - if self.extended_l2 { 4 } else { 3 };
        self.size.div_ceil(1 << (self.cluster_bits + l2_bits))
    }
}

/// Where everything of a new image goes. Offsets are in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub cluster_size: u64,
    /// Cluster 0: header, extensions, backing file name, zero-padded.
    pub header_cluster: Vec<u8>,
    pub header: Header,
    pub extensions: Extensions,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u64,
    /// Host offsets of the refcount blocks, indexed like the refcount table.
    pub refcount_blocks: Vec<u64>,
    /// 0 when the disk is empty (no L1 table), like QEMU.
    pub l1_offset: u64,
    pub l1_size: u64,
    pub fde: Option<FdeRegion>,
    /// Clusters in use (all with refcount 1): `0..used_clusters`.
    pub used_clusters: u64,
    /// The file's length.
    pub file_size: u64,
}

impl Plan {
    /// Bytes of refcount block `i`: refcount 1 for every used cluster it covers.
    pub fn refcount_block(&self, i: usize, refcount_order: u32) -> Vec<u8> {
        let cs = self.cluster_size;
        let bits = 1u64 << refcount_order;
        let per_block = cs * 8 / bits;
        let first = i as u64 * per_block;
        let count = self.used_clusters.saturating_sub(first).min(per_block);
        let mut b = vec![0u8; cs as usize];
        for k in 0..count as usize {
            super::refcount::set(&mut b, refcount_order, k, 1);
        }
        b
    }

    /// The refcount table's bytes (`refcount_table_clusters` clusters).
    pub fn refcount_table(&self) -> Vec<u8> {
        let mut t = vec![0u8; (self.refcount_table_clusters * self.cluster_size) as usize];
        for (i, off) in self.refcount_blocks.iter().enumerate() {
            t[i * 8..i * 8 + 8].copy_from_slice(&off.to_be_bytes());
        }
        t
    }
}

/// Plan a new image.
pub fn plan(spec: &CreateSpec) -> Result<Plan> {
    spec.check()?;
    let cs = 1u64 << spec.cluster_bits;
    let per_block = (cs * 8) >> spec.refcount_order;
    let l1_size = spec.l1_size();
    ensure!(
        l1_size * 8 <= 32 << 20,
        Usage,
        "qcow2: a {}-byte disk needs an L1 table above QEMU's 32 MiB limit (use larger clusters)",
        spec.size
    );
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let fde_clusters = spec.fde_len.map_or(0, |l| l.div_ceil(cs));
    // The refcount table grows (one more cluster at a time) until it can point at every
    // refcount block the layout needs.
    for rt_clusters in 1..=(8u64 << 20) / cs {
        let mut blocks = Vec::new();
        let mut next = 1 + rt_clusters;
        blocks.push(next);
        next += 1;
        let l1_offset = if l1_size > 0 { next * cs } else { 0 };
        next += l1_clusters;
        next = add_blocks(&mut blocks, next, per_block);
        let fde_start = next;
        next += fde_clusters;
        next = add_blocks(&mut blocks, next, per_block);
        if blocks.len() as u64 > rt_clusters * cs / 8 {
            continue;
        }
        let fde = spec.fde_len.map(|length| FdeRegion {
            offset: fde_start * cs,
            length,
        });
        let (header, extensions, header_cluster) =
            header_cluster(spec, rt_clusters, l1_offset, l1_size, fde)?;
        let l1_end = l1_offset + l1_size * 8;
        let file_size = if l1_size > 0 && next == l1_offset / cs + l1_clusters {
            l1_end
        } else {
            next * cs
        };
        return Ok(Plan {
            cluster_size: cs,
            header_cluster,
            header,
            extensions,
            refcount_table_offset: cs,
            refcount_table_clusters: rt_clusters,
            refcount_blocks: blocks.into_iter().map(|c| c * cs).collect(),
            l1_offset,
            l1_size,
            fde,
            used_clusters: next,
            file_size,
        });
    }
    bail!(
        Usage,
        "qcow2: the metadata of this image needs a refcount table above 8 MiB"
    )
}

/// Append refcount blocks at `next` until they cover every cluster before the end of
/// the blocks themselves; returns the new end.
fn add_blocks(blocks: &mut Vec<u64>, mut next: u64, per_block: u64) -> u64 {
    while (blocks.len() as u64) * per_block < next {
        blocks.push(next);
        next += 1;
    }
    next
}

/// The header, extensions and bytes of cluster 0 for `spec`.
fn header_cluster(
    spec: &CreateSpec,
    rt_clusters: u64,
    l1_offset: u64,
    l1_size: u64,
    fde: Option<FdeRegion>,
) -> Result<(Header, Extensions, Vec<u8>)> {
    let v3 = spec.version == 3;
    let mut incompat = 0;
    if spec.compression_type != CompressionType::Zlib {
        incompat |= INCOMPAT_COMPRESSION;
    }
    if spec.extended_l2 {
        incompat |= INCOMPAT_EXTL2;
    }
    let header = Header {
        version: spec.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: spec.cluster_bits,
        size: spec.size,
        crypt_method: if fde.is_some() {
            CryptMethod::Luks
        } else {
            CryptMethod::None
        },
        l1_size: l1_size as u32,
        l1_table_offset: l1_offset,
        refcount_table_offset: 1 << spec.cluster_bits,
        refcount_table_clusters: rt_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: incompat,
        compatible_features: if spec.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: 0,
        refcount_order: spec.refcount_order,
        header_length: if v3 {
            QEMU_V3_HEADER_LEN
        } else {
            V2_HEADER_LEN
        },
        compression_type: spec.compression_type,
    };
    let extensions = Extensions {
        backing_format: spec.backing_format.clone(),
        // qemu-img 10 writes no feature name table with clusters below 8 KiB.
        feature_names: if v3 && spec.cluster_bits >= FEATURE_TABLE_MIN_CLUSTER_BITS {
            FeatureName::qemu_table()
        } else {
            Vec::new()
        },
        fde,
        ..Extensions::default()
    };
    let (header, bytes) = build_header_cluster(&header, &extensions, spec.backing_file.as_deref())?;
    Ok((header, extensions, bytes))
}

/// Cluster 0 holding `header`, `ext` and the backing file name `backing` (right after
/// the extensions' end marker, as QEMU places it). The returned header has its
/// backing file offset and size set. Fails if it all does not fit in one cluster.
pub fn build_header_cluster(
    header: &Header,
    ext: &Extensions,
    backing: Option<&str>,
) -> Result<(Header, Vec<u8>)> {
    let cs = header.cluster_size();
    let mut h = header.clone();
    let ext_bytes = ext.encode();
    let head_len = h.encode().len() as u64;
    let name_off = head_len + ext_bytes.len() as u64;
    let name = backing.unwrap_or("");
    ensure!(
        name.len() <= MAX_BACKING_NAME,
        Usage,
        "qcow2: backing file name of {} bytes is longer than {MAX_BACKING_NAME}",
        name.len()
    );
    let end = name_off + name.len() as u64;
    ensure!(
        end <= cs,
        Unsupported,
        "qcow2: the header, its extensions and the backing file name need {end} bytes, more than the {cs}-byte first cluster"
    );
    (h.backing_file_offset, h.backing_file_size) = if name.is_empty() {
        (0, 0)
    } else {
        (name_off, name.len() as u32)
    };
    let mut out = h.encode();
    out.extend_from_slice(&ext_bytes);
    out.extend_from_slice(name.as_bytes());
    out.resize(cs as usize, 0);
    Ok((h, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::header::Limits;

    fn vector(name: &str) -> Vec<u8> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/qemu");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Decode cluster 0 of a QEMU-made image and encode it again: identical bytes.
    fn round_trip(img: &[u8]) {
        let h = Header::decode(img).unwrap();
        let cs = h.cluster_size() as usize;
        let e = Extensions::decode(img, u64::from(h.header_length), h.extensions_end()).unwrap();
        let name = (h.backing_file_offset != 0).then(|| {
            let n = &img[h.backing_file_offset as usize..][..h.backing_file_size as usize];
            String::from_utf8(n.to_vec()).unwrap()
        });
        let (h2, bytes) = build_header_cluster(&h, &e, name.as_deref()).unwrap();
        assert_eq!(h2, h);
        assert_eq!(bytes, img[..cs]);
    }

    #[test]
    fn qemu_vectors_round_trip() {
        for v in [
            "qcow2-luks-base.qcow2",
            "qcow2-luks-overlay.qcow2",
            "qcow2-legacy-aes.qcow2",
        ] {
            round_trip(&vector(v));
        }
    }

    #[test]
    fn plan_matches_qemu_luks_vector() {
        // qcow2-luks-base.qcow2: qemu-img create 2 MiB, aes-256-xts, 64 KiB clusters.
        let img = vector("qcow2-luks-base.qcow2");
        let mut spec = CreateSpec::new(2 << 20);
        spec.fde_len = Some(2_068_480);
        let p = plan(&spec).unwrap();
        let h = Header::decode(&img).unwrap();
        let e = Extensions::decode(&img, u64::from(h.header_length), h.extensions_end()).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.extensions, e);
        assert!(p.header_cluster == img[..65536]);
        assert!(p.refcount_table() == img[0x10000..0x20000]);
        // The vector holds no guest data yet: its refcount block is the initial one.
        // Its first 36 refcounts (metadata) are the initial ones; later ones count data.
        let rb = p.refcount_block(0, 4);
        assert!(rb[..72] == img[0x20000..0x20048]);
        assert!(rb[72..].iter().all(|&b| b == 0));
    }

    // The following facts were read from images made by qemu-img 10.0.2
    // (`qemu-img create -f qcow2 [-o ...] F SIZE`, then hexdump).

    #[test]
    fn plan_default_1g() {
        let p = plan(&CreateSpec::new(1 << 30)).unwrap();
        assert_eq!(p.refcount_blocks, [0x20000]);
        assert_eq!((p.l1_offset, p.l1_size), (0x30000, 2));
        assert_eq!(p.file_size, 0x30010);
        let rb = p.refcount_block(0, 4);
        assert_eq!(rb[..10], [0, 1, 0, 1, 0, 1, 0, 1, 0, 0]);
        let h = &p.header_cluster;
        assert_eq!(
            h[0x60..0x78],
            [
                0, 0, 0, 4, 0, 0, 0, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0x68, 3, 0xf8, 0x57, 0, 0, 1,
                0x80
            ]
        );
        assert_eq!(&h[0x7a..0x83], b"dirty bit");
        assert_eq!(&h[0x1ca..0x1db], b"raw external data");
        assert!(h[0x1f0..].iter().all(|&b| b == 0));
    }

    #[test]
    fn plan_small_clusters_need_more_refcount_blocks() {
        // cluster_size=512, 1G: L1 of 512 clusters at 3, refcount blocks 2, 515, 516.
        let mut spec = CreateSpec::new(1 << 30);
        spec.cluster_bits = 9;
        let p = plan(&spec).unwrap();
        assert_eq!(p.refcount_blocks, [1024, 515 * 512, 516 * 512]);
        assert_eq!((p.l1_offset, p.l1_size), (1536, 32768));
        assert_eq!(p.file_size, 264_704);
        // With LUKS: FDE at cluster 517, file of 4572 clusters, 18 refcount blocks.
        spec.fde_len = Some(2_068_480);
        let p = plan(&spec).unwrap();
        assert_eq!(p.fde.unwrap().offset, 517 * 512);
        assert_eq!(p.file_size, 4572 * 512);
        assert_eq!(p.refcount_blocks.len(), 18);
    }

    #[test]
    fn plan_2m_clusters() {
        let mut spec = CreateSpec::new(100 << 40);
        spec.cluster_bits = 21;
        let p = plan(&spec).unwrap();
        assert_eq!((p.l1_size, p.file_size), (200, 6_293_056));
        let mut spec = CreateSpec::new(1 << 30);
        spec.cluster_bits = 21;
        spec.fde_len = Some(2_068_480);
        let p = plan(&spec).unwrap();
        assert_eq!((p.fde.unwrap().offset, p.file_size), (8 << 20, 10 << 20));
    }

    #[test]
    fn plan_empty_disk_has_no_l1() {
        let p = plan(&CreateSpec::new(0)).unwrap();
        assert_eq!((p.l1_offset, p.l1_size, p.file_size), (0, 0, 196_608));
    }

    #[test]
    fn plan_v2_with_backing() {
        // compat=0.10 -b a.qcow2 -F qcow2: format extension at 72, name at 0x60.
        let mut spec = CreateSpec::new(1 << 30);
        spec.version = 2;
        spec.backing_file = Some("a.qcow2".into());
        spec.backing_format = Some("qcow2".into());
        let p = plan(&spec).unwrap();
        let h = &p.header_cluster;
        assert_eq!(h[8..20], [0, 0, 0, 0, 0, 0, 0, 0x60, 0, 0, 0, 7]);
        assert_eq!(h[0x48..0x58], *b"\xe2\x79\x2a\xca\0\0\0\x05qcow2\0\0\0");
        assert_eq!(&h[0x60..0x68], b"a.qcow2\0");
        let back = Header::decode(h).unwrap();
        back.validate(p.file_size, &Limits::default()).unwrap();
    }

    #[test]
    fn no_feature_table_below_8k_clusters() {
        // qemu-img create -o cluster_size=4096: extensions end right at 112.
        let mut spec = CreateSpec::new(1 << 20);
        spec.cluster_bits = 12;
        let p = plan(&spec).unwrap();
        assert!(p.header_cluster[112..].iter().all(|&b| b == 0));
        spec.cluster_bits = 13;
        let p = plan(&spec).unwrap();
        assert_eq!(p.header_cluster[112..116], [0x68, 0x03, 0xf8, 0x57]);
    }

    #[test]
    fn refcount_widths() {
        let mut spec = CreateSpec::new(1 << 20);
        spec.cluster_bits = 9;
        for (order, expect) in [(0u32, 0x0fu8), (1, 0x55), (2, 0x11), (3, 1)] {
            spec.refcount_order = order;
            let p = plan(&spec).unwrap();
            let rb = p.refcount_block(0, order);
            assert_eq!(rb[0], expect, "order {order}");
        }
        spec.refcount_order = 6;
        let p = plan(&spec).unwrap();
        assert_eq!(
            p.refcount_block(0, 6)[..16],
            [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn name_too_long_for_cluster() {
        let mut h = plan(&CreateSpec::new(1 << 20)).unwrap().header;
        h.cluster_bits = 10;
        let e = Extensions {
            feature_names: FeatureName::qemu_table(),
            ..Extensions::default()
        };
        let err = build_header_cluster(&h, &e, Some(&"x".repeat(600))).unwrap_err();
        assert!(err.message().contains("first cluster"), "{err}");
    }

    #[test]
    fn invalid_specs_are_refused() {
        let mut s = CreateSpec::new(1 << 20);
        s.version = 2;
        s.lazy_refcounts = true;
        assert!(plan(&s).is_err());
        let mut s = CreateSpec::new(1 << 20);
        s.extended_l2 = true;
        s.cluster_bits = 12;
        assert!(plan(&s).is_err());
        assert!(plan(&CreateSpec::new(1000)).is_err());
    }
}
