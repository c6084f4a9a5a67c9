//! Key media: removable filesystems named by filesystem label or UUID, found in two
//! ways. A watched directory (`/run/media/root`, `/media`) holds one subdirectory per
//! mounted medium, named by its label or UUID; and a mounted filesystem whose device is
//! `/dev/disk/by-label/LABEL` or `/dev/disk/by-uuid/UUID` is that medium wherever it is
//! mounted. [`scan`] returns the media present now; the agent compares scans to see
//! arrivals and removals (the [`crate::watch`] thread tells it when to look).
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A medium's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MediumId {
    Label(String),
    Uuid(String),
}

impl fmt::Display for MediumId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediumId::Label(l) => write!(f, "label {l}"),
            MediumId::Uuid(u) => write!(f, "fs-uuid {u}"),
        }
    }
}

impl MediumId {
    /// Whether a directory or device link called `name` names this medium (UUIDs
    /// compare without case: blkid prints FAT serials upper case, others lower).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            MediumId::Label(l) => l == name,
            MediumId::Uuid(u) => u.eq_ignore_ascii_case(name),
        }
    }
}

/// Where media are looked for.
#[derive(Clone, Debug)]
pub struct MediaSources {
    pub watch: Vec<PathBuf>,
    pub require_mount: bool,
    pub mounts: bool,
    /// udev's link tree (`/dev/disk`: `by-label/L`, `by-uuid/U`).
    pub dev_disk: PathBuf,
    /// The mount table (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
}

/// Where udev links devices by label and UUID.
pub const DEFAULT_DEV_DISK: &str = "/dev/disk";
/// The mount table of the agent's mount namespace.
pub const DEFAULT_MOUNTINFO: &str = "/proc/self/mountinfo";

/// The media present, each with the directory its files are under.
pub type Present = BTreeMap<MediumId, PathBuf>;

/// Look for `wanted` media now.
pub fn scan(src: &MediaSources, wanted: &[MediumId]) -> Present {
    let mut found = Present::new();
    for dir in &src.watch {
        for id in wanted {
            if found.contains_key(id) {
                continue;
            }
            if let Some(p) = in_watch_dir(dir, id, src.require_mount) {
                found.insert(id.clone(), p);
            }
        }
    }
    if src.mounts {
        let mounts = read_mounts(&src.mountinfo);
        for id in wanted {
            if found.contains_key(id) {
                continue;
            }
            if let Some(p) = mounted_device(&src.dev_disk, id, &mounts) {
                found.insert(id.clone(), p);
            }
        }
    }
    found
}

/// `dir/NAME` for a name of `id`: a real directory (not a symlink), and a mount point
/// when `require_mount`.
fn in_watch_dir(dir: &Path, id: &MediumId, require_mount: bool) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !id.matches(name) {
            continue;
        }
        let path = e.path();
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        if require_mount && !is_mount_point(&path, &meta) {
            continue;
        }
        return Some(path);
    }
    None
}

/// A directory on another device than its parent is a mount point.
fn is_mount_point(path: &Path, meta: &std::fs::Metadata) -> bool {
    let parent = path.parent().and_then(|p| p.metadata().ok());
    parent.is_some_and(|p| p.dev() != meta.dev())
}

/// (device, mount point) of every mounted filesystem.
fn read_mounts(mountinfo: &Path) -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string(mountinfo).unwrap_or_default();
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// A mountinfo line: field 5 is the mount point, the first field after " - " plus one
/// is the source.
fn parse_mountinfo_line(line: &str) -> Option<(String, PathBuf)> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let source = right.split(' ').nth(1)?;
    Some((unescape(source), PathBuf::from(unescape(mount_point))))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`. A backslash not
/// followed by three octal digits of a byte (at most `\377`) is kept as it is.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match octal_byte(b.get(i..i + 4)) {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte of an escape `\ooo`, if `esc` is one.
fn octal_byte(esc: Option<&[u8]>) -> Option<u8> {
    let [b'\\', digits @ ..] = esc? else {
        return None;
    };
    let v = digits.iter().try_fold(0u16, |v, &c| {
        (b'0'..=b'7')
            .contains(&c)
            .then(|| v * 8 + u16::from(c - b'0'))
    })?;
    u8::try_from(v).ok()
}

/// The mount point of the device udev links as `id`: an entry of `by-label` or
/// `by-uuid` whose name (udev writes unsafe bytes as `\xHH`) names `id` (a UUID in any
/// case: udev keeps blkid's, upper case for FAT), resolved to the device that mountinfo
/// names as a mount's source.
fn mounted_device(dev_disk: &Path, id: &MediumId, mounts: &[(String, PathBuf)]) -> Option<PathBuf> {
    let sub = match id {
        MediumId::Label(_) => "by-label",
        MediumId::Uuid(_) => "by-uuid",
    };
    let entries = std::fs::read_dir(dev_disk.join(sub)).ok()?;
    let link = entries.flatten().find_map(|e| {
        let name = e.file_name();
        id.matches(&udev_unescape(name.to_str()?)).then(|| e.path())
    })?;
    let dev = std::fs::canonicalize(&link).ok()?;
    mounts
        .iter()
        .find(|(src, _)| Path::new(src) == dev)
        .map(|(_, mp)| mp.clone())
}

/// udev's link names write bytes outside its safe set as `\xHH`.
fn udev_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Exactly two hex digits (from_str_radix alone would take a sign: `\x+f`).
        let hex = b
            .get(i + 2..i + 4)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok());
        match (
            b[i],
            b.get(i + 1),
            hex.and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'\\', Some(b'x'), Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udev_escapes_are_two_hex_digits() {
        assert_eq!(udev_unescape(r"KEYS\x20USB\x2f1"), "KEYS USB/1");
        // A sign or a single digit is no escape: kept as written.
        assert_eq!(udev_unescape(r"a\x+fb"), r"a\x+fb");
        assert_eq!(udev_unescape(r"a\x-1"), r"a\x-1");
        assert_eq!(udev_unescape(r"end\x4"), r"end\x4");
    }

    #[test]
    fn mountinfo_lines() {
        let l = r"36 35 98:0 / /run/media/root/MY\040KEYS rw,nosuid - vfat /dev/sdb1 rw";
        assert_eq!(
            parse_mountinfo_line(l),
            Some(("/dev/sdb1".into(), PathBuf::from("/run/media/root/MY KEYS")))
        );
        assert_eq!(parse_mountinfo_line("garbage"), None);
    }

    /// Found by the `agent_files` fuzz target: `\400` overflowed a byte (a panic in a
    /// debug build). Escapes past `\377`, short or non-octal ones stay literal.
    #[test]
    fn mountinfo_escapes_that_are_not_bytes_stay_literal() {
        assert_eq!(unescape(r"a\400b\777"), r"a\400b\777");
        assert_eq!(unescape(r"\377"), "\u{fffd}");
        assert_eq!(unescape(r"x\134y\011\04"), "x\\y\t\\04");
        assert_eq!(unescape(r"\08a\"), r"\08a\");
        let l = r"1 2 3:4 / /m\400 rw - ext4 /dev/sdc1 rw";
        assert_eq!(
            parse_mountinfo_line(l),
            Some(("/dev/sdc1".into(), PathBuf::from(r"/m\400")))
        );
    }

    #[test]
    fn watch_dir_entries_by_label_and_uuid() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("KEYS")).unwrap();
        std::fs::create_dir(t.path().join("1234-abcd")).unwrap();
        std::os::unix::fs::symlink(t.path().join("KEYS"), t.path().join("LINK")).unwrap();
        std::fs::write(t.path().join("FILE"), b"").unwrap();
        let src = MediaSources {
            watch: vec![t.path().into()],
            require_mount: false,
            mounts: false,
            dev_disk: DEFAULT_DEV_DISK.into(),
            mountinfo: DEFAULT_MOUNTINFO.into(),
        };
        let ids = [
            MediumId::Label("KEYS".into()),
            MediumId::Uuid("1234-ABCD".into()),
            MediumId::Label("LINK".into()),
            MediumId::Label("FILE".into()),
            MediumId::Label("keys".into()),
        ];
        let found = scan(&src, &ids);
        assert_eq!(found.keys().cloned().collect::<Vec<_>>(), ids[..2].to_vec());
        // A plain directory is no mount point.
        let strict = MediaSources {
            require_mount: true,
            ..src
        };
        assert!(scan(&strict, &ids).is_empty());
    }

    /// Media found through a fake udev tree (`by-label`, `by-uuid` symlinks to fake
    /// device nodes) and a fake mountinfo: by label (udev-escaped), by UUID in either
    /// case, and not when the device is not mounted or the link names another device.
    #[test]
    fn mounted_media_by_label_and_uuid() {
        let t = tempfile::tempdir().unwrap();
        let p = |n: &str| t.path().join(n);
        for d in ["dev", "disk/by-label", "disk/by-uuid", "mnt"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        for dev in ["sdb1", "sdc1", "sdd1"] {
            std::fs::write(p("dev").join(dev), b"").unwrap();
        }
        let link = |to: &str, at: &str| std::os::unix::fs::symlink(to, p(at)).unwrap();
        link("../../dev/sdb1", "disk/by-label/MY\\x20KEYS");
        link("../../dev/sdc1", "disk/by-uuid/1234-ABCD");
        link("../../dev/sdd1", "disk/by-label/UNMOUNTED");
        let dev = |n: &str| p("dev").join(n).display().to_string();
        let mountinfo = format!(
            "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
             36 35 8:17 / {}/mnt/a\\040b rw,nosuid - vfat {} rw\n\
             37 35 8:33 / {}/mnt/c rw - vfat {} rw\n",
            t.path().display(),
            dev("sdb1"),
            t.path().display(),
            dev("sdc1"),
        );
        std::fs::write(p("mountinfo"), mountinfo).unwrap();
        let src = MediaSources {
            watch: Vec::new(),
            require_mount: false,
            mounts: true,
            dev_disk: p("disk"),
            mountinfo: p("mountinfo"),
        };
        let ids = [
            MediumId::Label("MY KEYS".into()),
            MediumId::Uuid("1234-abcd".into()),
            MediumId::Label("UNMOUNTED".into()),
            MediumId::Uuid("9999-0000".into()),
        ];
        let found = scan(&src, &ids);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[&ids[0]], p("mnt/a b"));
        assert_eq!(found[&ids[1]], p("mnt/c"));
        // With mounts off, the same tree finds nothing.
        let off = MediaSources {
            mounts: false,
            ..src
        };
        assert!(scan(&off, &ids).is_empty());
    }
}
