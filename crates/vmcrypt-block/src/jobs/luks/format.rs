//! `luks format`: cryptsetup's luksFormat on a device that already exists (a file, a
//! block device, an LV), or on a data device plus a detached header file. Unlike
//! `create`, the device keeps its size: nothing is truncated or grown (cryptsetup grows
//! a file that is too small; here that is refused before anything is written).
//!
//! [`plan`] checks the options and works out the layout cryptsetup would choose for
//! them (data offset, LUKS2 keyslots area, sector size) against the device's size;
//! [`FormatPlan::run`] writes the header with the same code `create` uses
//! ([`Volume::create`]). The front end asks for confirmation and the passphrase in
//! between, so a bad option or a device that is too small is reported before either.
use super::slots::NewKeyslot;
use crate::driver::BlockDriver;
use crate::drivers::file::FileDriver;
use crate::drivers::luks::params::{DEFAULT_DATA_OFFSET, DEFAULT_HDR_SIZE};
use crate::drivers::luks::{CreateParams, KdfKind, Version, Volume};
use std::path::Path;
use std::sync::Arc;
use vmcrypt_crypto::{CipherMode, CipherSpec, HashAlg, SecretBytes};
use vmcrypt_error::{Result, ResultExt, ensure};
use vmcrypt_format::luks1::{self, Layout, STRIPES};
use vmcrypt_format::luks2::MAX_KEYSLOTS_SIZE;

/// cryptsetup's default cipher.
pub const DEFAULT_CIPHER: &str = "aes-xts-plain64";
/// Sector unit of `--offset` and `--align-payload`.
const SECTOR: u64 = 512;
/// cryptsetup's default data alignment (1 MiB).
const DEFAULT_ALIGN: u64 = 1 << 20;

/// What `luks format` was asked for, with cryptsetup's option names in the comments.
#[derive(Clone, Debug)]
pub struct FormatRequest {
    /// The device to format (its data area with `header`).
    pub device: String,
    /// `--header`: a detached header file (created owner-only when missing).
    pub header: Option<String>,
    /// `--type luks1|luks2`.
    pub version: Version,
    /// `-c/--cipher` (default aes-xts-plain64).
    pub cipher: Option<String>,
    /// `-s/--key-size` in bits (default 512 for XTS, else 256).
    pub key_bits: Option<u32>,
    /// `-h/--hash`: LUKS1 header hash, LUKS2 key slot PBKDF2 / AF and digest hash.
    pub hash: Option<String>,
    /// `--pbkdf`, `--iter-time`, `--pbkdf-force-iterations`, `--pbkdf-memory`,
    /// `--pbkdf-parallel` (its `hash` is ignored: `hash` above is used).
    pub keyslot: NewKeyslot,
    /// `-S/--key-slot` for the passphrase (default 0).
    pub key_slot: Option<u32>,
    /// `--sector-size` (LUKS2; default as cryptsetup 2.6.1 picks it, see
    /// [`default_sector_size`]).
    pub sector_size: Option<u32>,
    /// `--label`, `--subsystem` (LUKS2).
    pub label: Option<String>,
    pub subsystem: Option<String>,
    /// `--uuid`.
    pub uuid: Option<String>,
    /// `--offset`: data offset in 512-byte sectors, a multiple of 8 (0: not given).
    pub offset_sectors: Option<u64>,
    /// `--align-payload`: data alignment in 512-byte sectors (with a detached header,
    /// the data offset); not with `--offset` (0: not given).
    pub align_sectors: Option<u64>,
    /// `--luks2-metadata-size`, `--luks2-keyslots-size` in bytes.
    pub metadata_size: Option<u64>,
    pub keyslots_size: Option<u64>,
}

impl FormatRequest {
    /// A request with cryptsetup's defaults for `device`.
    pub fn new(device: &str, version: Version) -> Self {
        FormatRequest {
            device: device.into(),
            header: None,
            version,
            cipher: None,
            key_bits: None,
            hash: None,
            keyslot: NewKeyslot::default(),
            key_slot: None,
            sector_size: None,
            label: None,
            subsystem: None,
            uuid: None,
            offset_sectors: None,
            align_sectors: None,
            metadata_size: None,
            keyslots_size: None,
        }
    }
}

/// A checked format request: the header that will be written and where.
#[derive(Clone, Debug)]
pub struct FormatPlan {
    pub device: String,
    pub header: Option<String>,
    /// The device's size in bytes; it is the same after the format.
    pub device_size: u64,
    /// Where the encrypted data starts on the device, in bytes.
    pub data_offset: u64,
    /// Bytes of LUKS metadata and key slots written on the header device.
    pub header_bytes: u64,
    /// The LUKS version already on the header device, which the format destroys.
    pub existing: Option<u16>,
    /// Things the user should know before confirming (no room for data, ...).
    pub warnings: Vec<String>,
    params: CreateParams,
}

/// What a format did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatReport {
    pub slot: u32,
    pub uuid: String,
}

/// Where the data and the metadata go.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Geometry {
    data_offset: u64,
    /// Bytes of header and key material on the header device.
    header_bytes: u64,
    /// LUKS2 only.
    keyslots_size: u64,
    metadata_size: u64,
    sector_size: u32,
    /// LUKS1 only.
    align_sectors: u64,
    /// What cryptsetup would warn about (a keyslots area cut down to fit).
    warnings: Vec<String>,
}

/// Check `req` against the device: refuses bad options, and a device too small for the
/// header, before anything is opened for writing.
pub fn plan(req: &FormatRequest) -> Result<FormatPlan> {
    let req = &placement(req)?;
    let spec = cipher_spec(req)?;
    let detached = req.header.is_some();
    let data = FileDriver::open_with(Path::new(&req.device), true, false)?;
    let device_size = data.size();
    let preferred = data.preferred_sector_size();
    drop(data);
    let geo = match req.version {
        Version::V1 => luks1_geometry(req, spec.key_bytes, detached)?,
        Version::V2 => luks2_geometry(req, detached, device_size, preferred)?,
    };
    let params = create_params(req, spec, &geo, detached)?;
    let header_path = req.header.as_deref().unwrap_or(&req.device);
    let HeaderState {
        size: header_size,
        existing,
    } = header_device_state(header_path)?;
    let mut warnings = geo.warnings.clone();
    if detached {
        if let Some((size, false)) = header_size {
            ensure!(
                size >= geo.header_bytes,
                Usage,
                "header device '{header_path}' is {size} bytes; the LUKS header needs {}",
                geo.header_bytes
            );
        }
    } else {
        let need = geo.header_bytes.max(geo.data_offset);
        ensure!(
            device_size >= need,
            Usage,
            "device '{}' is {device_size} bytes, too small for this LUKS{} header: it needs at \
             least {need} bytes (data offset {}); nothing was written (the device is never \
             grown: choose a smaller layout with --offset or --luks2-keyslots-size, or a \
             larger device)",
            req.device,
            req.version.number(),
            geo.data_offset
        );
    }
    if device_size <= geo.data_offset {
        warnings.push(format!(
            "Device {} is too small for activation, there is no remaining space for data.",
            req.device
        ));
    }
    Ok(FormatPlan {
        device: req.device.clone(),
        header: req.header.clone(),
        device_size,
        data_offset: geo.data_offset,
        header_bytes: geo.header_bytes,
        existing,
        warnings,
        params,
    })
}

impl FormatPlan {
    /// The LUKS version that will be written.
    pub fn version(&self) -> Version {
        self.params.version
    }

    /// Write the header with `passphrase` in the requested slot (and `volume_key` as the
    /// volume key when given). The data device keeps its size.
    pub fn run(&self, passphrase: &[u8], volume_key: Option<SecretBytes>) -> Result<FormatReport> {
        ensure!(!passphrase.is_empty(), Usage, "empty passphrase refused");
        let mut params = self.params.clone();
        params.volume_key = volume_key;
        // The write lock on the data device refuses a device some VM or daemon uses.
        let data: Arc<dyn BlockDriver> =
            Arc::new(FileDriver::open(Path::new(&self.device), false)?);
        ensure!(
            data.size() == self.device_size,
            Busy,
            "'{}' changed size while being formatted",
            self.device
        );
        let hdev = match &self.header {
            None => data.clone(),
            Some(h) => open_header(Path::new(h))?,
        };
        let (vol, _key) = Volume::create(hdev, &params, passphrase)
            .with_ctx(|| format!("formatting '{}'", self.device))?;
        data.flush()?;
        ensure!(
            data.size() == self.device_size,
            Internal,
            "'{}' changed size from {} to {} bytes while being formatted",
            self.device,
            self.device_size,
            data.size()
        );
        Ok(FormatReport {
            slot: params.slot,
            uuid: vol.uuid().to_string(),
        })
    }
}

/// `--offset` and `--align-payload` as cryptsetup reads them: 0 is the same as not
/// given, the two do not combine, and an offset is a whole number of 4096-byte blocks.
fn placement(req: &FormatRequest) -> Result<FormatRequest> {
    let offset = req.offset_sectors.filter(|&o| o != 0);
    let align = req.align_sectors.filter(|&a| a != 0);
    ensure!(
        offset.is_none() || align.is_none(),
        Usage,
        "--offset and --align-payload cannot be combined"
    );
    if let Some(o) = offset {
        ensure!(
            o.is_multiple_of(4096 / SECTOR),
            Usage,
            "--offset {o}: the data offset is not a multiple of 4096 bytes (8 sectors)"
        );
    }
    Ok(FormatRequest {
        offset_sectors: offset,
        align_sectors: align,
        ..req.clone()
    })
}

/// The cipher `-c` and `-s` name.
fn cipher_spec(req: &FormatRequest) -> Result<CipherSpec> {
    let name = req.cipher.as_deref().unwrap_or(DEFAULT_CIPHER);
    let bits = match req.key_bits {
        Some(b) => b,
        None if name.split('-').nth(1) == Some(CipherMode::Xts.name()) => 512,
        None => 256,
    };
    ensure!(
        bits > 0 && bits.is_multiple_of(8),
        Usage,
        "key size {bits} bits is not a whole number of bytes"
    );
    CipherSpec::from_luks2(name, bits as usize / 8)
        .with_ctx(|| format!("cipher '{name}' with a {bits}-bit key"))
}

/// What is on the header device before the format.
struct HeaderState {
    /// Its size and whether it is a regular file; `None` when a detached header file
    /// does not exist yet.
    size: Option<(u64, bool)>,
    /// The LUKS version it holds.
    existing: Option<u16>,
}

fn header_device_state(path: &str) -> Result<HeaderState> {
    let p = Path::new(path);
    if !p.exists() {
        return Ok(HeaderState {
            size: None,
            existing: None,
        });
    }
    let is_file = std::fs::metadata(p).is_ok_and(|m| m.is_file());
    let dev = FileDriver::open_with(p, true, false)?;
    let mut head = [0u8; 8];
    let existing = if dev.size() >= 8 {
        dev.read_at(&mut head, 0)?;
        luks1::version_of(&head)
    } else {
        None
    };
    Ok(HeaderState {
        size: Some((dev.size(), is_file)),
        existing,
    })
}

/// A detached header file: opened, or created owner-only (it holds key slots).
fn open_header(path: &Path) -> Result<Arc<dyn BlockDriver>> {
    let f = if path.exists() {
        FileDriver::open(path, false)?
    } else {
        FileDriver::create_private(path, 0)?
    };
    Ok(Arc::new(f))
}

/// LUKS1 as cryptsetup lays it out: key material 4 KiB aligned, payload at the next
/// multiple of the alignment (1 MiB), at `--offset`, or (detached) at the alignment.
fn luks1_geometry(req: &FormatRequest, key_bytes: usize, detached: bool) -> Result<Geometry> {
    for (name, given) in [
        ("--sector-size", req.sector_size.is_some()),
        ("--luks2-metadata-size", req.metadata_size.is_some()),
        ("--luks2-keyslots-size", req.keyslots_size.is_some()),
        ("--label", req.label.is_some()),
        ("--subsystem", req.subsystem.is_some()),
    ] {
        ensure!(!given, Usage, "{name} needs LUKS2 (--type luks2)");
    }
    let align = req.align_sectors.unwrap_or(DEFAULT_ALIGN / SECTOR);
    let (offsets, default_payload) = luks1::plan_layout(
        key_bytes as u32,
        Layout::Cryptsetup {
            align_sectors: align,
        },
        detached,
    );
    let material = (key_bytes as u64 * u64::from(STRIPES)).div_ceil(SECTOR);
    let header_end = (u64::from(offsets[7]) + material) * SECTOR;
    let payload = match (req.offset_sectors, detached) {
        (Some(o), _) => o,
        (None, true) => req.align_sectors.unwrap_or(0),
        (None, false) => u64::from(default_payload),
    };
    let data_offset = payload * SECTOR;
    ensure!(
        detached || data_offset >= header_end,
        Usage,
        "data offset {payload} sectors overlaps the LUKS1 header and key slots ({} sectors)",
        header_end / SECTOR
    );
    Ok(Geometry {
        data_offset,
        // `Volume::create` clears the header device up to the payload offset too.
        header_bytes: header_end.max(data_offset),
        keyslots_size: 0,
        metadata_size: 0,
        sector_size: SECTOR as u32,
        align_sectors: align,
        warnings: Vec::new(),
    })
}

/// LUKS2 as cryptsetup 2.6.1 lays it out: two metadata copies, then the keyslots area.
/// With a fixed data offset (`--offset`, or `--align-payload` with a detached header)
/// the keyslots area fills the room up to it (at most 128 MiB; a larger
/// `--luks2-keyslots-size` is cut down with a warning). Otherwise the area is 16 MiB
/// minus the metadata unless given, and attached data starts at the next multiple of
/// the alignment (1 MiB) while detached data starts at 0.
fn luks2_geometry(
    req: &FormatRequest,
    detached: bool,
    data_size: u64,
    preferred: u32,
) -> Result<Geometry> {
    let md = req.metadata_size.unwrap_or(DEFAULT_HDR_SIZE);
    let default_ks = DEFAULT_DATA_OFFSET.saturating_sub(2 * md);
    let fixed = req
        .offset_sectors
        .or(req.align_sectors.filter(|_| detached));
    let alignment = match (req.align_sectors, detached) {
        (Some(a), _) => a * SECTOR,
        (None, true) => 0,
        (None, false) => DEFAULT_ALIGN,
    };
    let mut warnings = Vec::new();
    let (data_offset, ks) = match fixed {
        Some(o) => {
            let off = o * SECTOR;
            ensure!(
                off >= 2 * md,
                Usage,
                "data offset {off} bytes is too small: the two LUKS2 metadata copies \
                 take {} bytes",
                2 * md
            );
            let room = ((off - 2 * md) / 4096 * 4096).min(MAX_KEYSLOTS_SIZE);
            let ks = match req.keyslots_size {
                Some(k) if k > room => {
                    warnings.push(format!("LUKS2 keyslots area size changed to {room} bytes."));
                    room
                }
                Some(k) => k,
                None => room,
            };
            (off, ks)
        }
        None if detached => (0, req.keyslots_size.unwrap_or(default_ks)),
        None => {
            let ks = req.keyslots_size.unwrap_or(default_ks);
            ((2 * md + ks).div_ceil(alignment) * alignment, ks)
        }
    };
    let data_area = data_size.wrapping_sub(data_offset);
    let sector_size = match req.sector_size {
        Some(s) => {
            ensure!(
                s <= 512 || data_area.is_multiple_of(u64::from(s)),
                Usage,
                "the data area ({data_area} bytes after offset {data_offset}) is not a \
                 multiple of the requested sector size {s}"
            );
            s
        }
        None => {
            let s = default_sector_size(preferred, fixed, data_size.wrapping_sub(alignment));
            ensure!(
                s <= 512 || data_area.is_multiple_of(u64::from(s)),
                Usage,
                "the data area ({data_area} bytes after offset {data_offset}) is not a \
                 multiple of {s}, the sector size cryptsetup 2.6.1 picks for this device \
                 and alignment; choose one with --sector-size (512 always fits)"
            );
            s
        }
    };
    Ok(Geometry {
        data_offset,
        header_bytes: 2 * md + ks,
        keyslots_size: ks,
        metadata_size: md,
        sector_size,
        align_sectors: 0,
        warnings,
    })
}

/// cryptsetup 2.6.1's sector size when `--sector-size` is not given: the device's
/// `preferred` size, or 512 when a fixed data offset counted in 512-byte sectors is not
/// a multiple of it (so a 1 MiB offset, 2048 sectors, falls back to 512), or when the
/// device size less the alignment (not less the data offset) is not a multiple of it.
fn default_sector_size(preferred: u32, offset_sectors: Option<u64>, size_less_align: u64) -> u32 {
    let p = u64::from(preferred);
    let misaligned =
        offset_sectors.is_some_and(|o| !o.is_multiple_of(p)) || !size_less_align.is_multiple_of(p);
    if preferred <= 512 || misaligned {
        512
    } else {
        preferred
    }
}

/// The create parameters for `geo`.
fn create_params(
    req: &FormatRequest,
    spec: CipherSpec,
    geo: &Geometry,
    detached: bool,
) -> Result<CreateParams> {
    let slot_req = NewKeyslot {
        hash: req.hash.clone(),
        ..req.keyslot.clone()
    };
    let mut keyslot = slot_req.params(req.version)?;
    let mut p = match req.version {
        Version::V1 => {
            if let Some(k) = &req.keyslot.kdf {
                ensure!(
                    KdfKind::from_name(k)? == KdfKind::Pbkdf2,
                    Usage,
                    "LUKS1 key slots use pbkdf2 only (got --pbkdf {k})"
                );
            }
            keyslot.kdf = KdfKind::Pbkdf2;
            keyslot.hash = HashAlg::from_name(req.hash.as_deref().unwrap_or("sha256"))?;
            let mut p = CreateParams::luks1(spec);
            p.layout = Layout::Cryptsetup {
                align_sectors: geo.align_sectors,
            };
            p
        }
        Version::V2 => {
            let mut p = CreateParams::luks2(spec);
            (p.hdr_size, p.keyslots_size) = (geo.metadata_size, Some(geo.keyslots_size));
            p.sector_size = geo.sector_size;
            p.label = req.label.clone().unwrap_or_default();
            p.subsystem = req.subsystem.clone().unwrap_or_default();
            p
        }
    };
    if let (KdfKind::Pbkdf2, Some(i)) = (keyslot.kdf, keyslot.iterations) {
        ensure!(
            i >= 1000,
            Usage,
            "PBKDF2 iterations {i} are below the minimum of 1000"
        );
    }
    p.keyslot = keyslot;
    p.slot = req.key_slot.unwrap_or(0);
    p.detached = detached;
    p.data_offset = Some(geo.data_offset);
    p.uuid = req.uuid.clone();
    if p.version == Version::V2 {
        p.luks2_layout()?;
    } else {
        ensure!(
            p.slot < 8,
            Usage,
            "key slot {} is out of range (0-7)",
            p.slot
        );
        p.payload_sectors()?;
    }
    if let Some(u) = &p.uuid {
        crate::drivers::luks::validate_uuid(u)?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(req: &FormatRequest, size: u64) -> Geometry {
        luks2_geometry(req, req.header.is_some(), size, 4096).unwrap()
    }

    /// Layouts cryptsetup 2.6.1 chose for these options on a 40 MiB file.
    #[test]
    fn luks2_layouts_match_cryptsetup() {
        let size = 40 << 20;
        let base = FormatRequest::new("d", Version::V2);
        let g = geo(&base, size);
        assert_eq!(
            (g.data_offset, g.keyslots_size),
            (16 << 20, (16 << 20) - 32768)
        );
        let small = FormatRequest {
            metadata_size: Some(64 << 10),
            keyslots_size: Some(1 << 20),
            ..base.clone()
        };
        assert_eq!(geo(&small, size).data_offset, 2 << 20);
        let off = FormatRequest {
            offset_sectors: Some(40000),
            ..base.clone()
        };
        assert_eq!(geo(&off, size).keyslots_size, 20_447_232);
        let aligned = FormatRequest {
            align_sectors: Some(65536),
            ..base.clone()
        };
        assert_eq!(geo(&aligned, size).data_offset, 32 << 20);
        let detached = FormatRequest {
            header: Some("h".into()),
            ..base
        };
        let g = geo(&detached, size);
        assert_eq!((g.data_offset, g.header_bytes), (0, 16 << 20));
    }

    /// Sector sizes, data offsets and keyslots areas cryptsetup 2.6.1 chose on files
    /// (`luksFormat --type luks2` without `--sector-size`, then `luksDump`).
    #[test]
    fn default_sector_size_is_cryptsetups() {
        const M: u64 = 1 << 20;
        // (size, detached, --offset, --align-payload) -> (sector, data offset, keyslots)
        type Given = (u64, bool, Option<u64>, Option<u64>);
        let cases: &[(Given, (u32, u64, u64))] = &[
            ((40 * M, false, None, None), (4096, 16 * M, 16_744_448)),
            ((40 * M + 512, false, None, None), (512, 16 * M, 16_744_448)),
            (
                (40 * M, false, Some(40000), None),
                (512, 20_480_000, 20_447_232),
            ),
            (
                (40 * M, false, Some(34816), None),
                (512, 17 * M, 17_793_024),
            ),
            (
                (40 * M, false, Some(36864), None),
                (4096, 18 * M, 18_841_600),
            ),
            (
                (40 * M, false, None, Some(2049)),
                (512, 16_785_408, 16_744_448),
            ),
            ((40 * M, false, None, Some(1)), (512, 16 * M, 16_744_448)),
            ((40 * M, true, None, None), (4096, 0, 16_744_448)),
            ((40 * M, true, Some(2048), None), (512, M, 1_015_808)),
            ((40 * M, true, Some(4096), None), (4096, 2 * M, 2_064_384)),
            ((40 * M, true, None, Some(2048)), (512, M, 1_015_808)),
            (
                (40 * M, true, None, Some(8193)),
                (512, 4_194_816, 4_161_536),
            ),
            (
                (40 * M, true, Some(300_000), None),
                (512, 153_600_000, 128 * M),
            ),
        ];
        for &((size, detached, offset, align), want) in cases {
            let req = FormatRequest {
                header: detached.then(|| "h".into()),
                offset_sectors: offset,
                align_sectors: align,
                ..FormatRequest::new("d", Version::V2)
            };
            let g = geo(&req, size);
            let got = (g.sector_size, g.data_offset, g.keyslots_size);
            assert_eq!(got, want, "{size} detached={detached} {offset:?} {align:?}");
        }
    }

    /// A block device whose preferred size is 512 keeps 512; where cryptsetup keeps 4096
    /// for a data area that is not a multiple of it, the format is refused, as a
    /// requested size that does not fit is.
    #[test]
    fn sector_size_fallbacks_and_refusals() {
        let base = FormatRequest::new("d", Version::V2);
        let g = luks2_geometry(&base, false, 40 << 20, 512).unwrap();
        assert_eq!(g.sector_size, 512);
        let align = FormatRequest {
            align_sectors: Some(1),
            ..base.clone()
        };
        let e = luks2_geometry(&align, false, (40 << 20) + 512, 4096).unwrap_err();
        assert!(e.to_string().contains("--sector-size"), "{e}");
        let forced = FormatRequest {
            sector_size: Some(4096),
            ..base
        };
        let e = luks2_geometry(&forced, false, (40 << 20) + 512, 4096).unwrap_err();
        assert!(e.to_string().contains("sector size"), "{e}");
    }

    /// A keyslots area larger than the room before a fixed offset is cut down with
    /// cryptsetup's warning; offsets are checked as cryptsetup checks them.
    #[test]
    fn fixed_offsets() {
        let base = FormatRequest {
            offset_sectors: Some(8192),
            keyslots_size: Some(8 << 20),
            ..FormatRequest::new("d", Version::V2)
        };
        let g = geo(&base, 40 << 20);
        assert_eq!(g.keyslots_size, 4_161_536);
        assert_eq!(
            g.warnings,
            ["LUKS2 keyslots area size changed to 4161536 bytes."]
        );
        for (o, a) in [(Some(4097), None), (Some(8192), Some(8))] {
            let req = FormatRequest {
                offset_sectors: o,
                align_sectors: a,
                ..base.clone()
            };
            assert!(placement(&req).is_err(), "{o:?} {a:?}");
        }
        let zero = FormatRequest {
            offset_sectors: Some(0),
            align_sectors: Some(0),
            ..base
        };
        let z = placement(&zero).unwrap();
        assert_eq!((z.offset_sectors, z.align_sectors), (None, None));
    }

    #[test]
    fn luks1_offsets() {
        let base = FormatRequest::new("d", Version::V1);
        let g = luks1_geometry(&base, 64, false).unwrap();
        assert_eq!(g.data_offset, 4096 * 512);
        let packed = FormatRequest {
            align_sectors: Some(8),
            ..base.clone()
        };
        assert_eq!(
            luks1_geometry(&packed, 64, false).unwrap().data_offset,
            4040 * 512
        );
        let inside = FormatRequest {
            offset_sectors: Some(100),
            ..base
        };
        assert!(luks1_geometry(&inside, 64, false).is_err());
    }
}
