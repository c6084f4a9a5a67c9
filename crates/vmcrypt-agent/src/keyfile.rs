//! Reading a key file from a key medium, once, with the checks a file from a removable
//! filesystem needs: resolved beneath the medium's root with `openat2` (no `..`, no
//! symlink or mount crossing out of the medium, no magic links), a regular file, owned
//! by an allowed user, not writable by group or others, and no larger than the cap. The
//! bytes go into a zeroized buffer; nothing is cached.
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::io::Read;
use std::path::Path;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, bail, ensure};
use zeroize::Zeroizing;

/// What a key file must satisfy.
#[derive(Clone, Debug)]
pub struct KeyFilePolicy {
    pub max_size: u64,
    /// Allowed owners (uids).
    pub owners: Vec<u32>,
}

impl KeyFilePolicy {
    /// The policy of the configuration: root and the agent's user by default.
    pub fn new(max_size: u64, owners: Option<&[u32]>) -> Self {
        let owners = owners.map(<[u32]>::to_vec).unwrap_or_else(|| {
            let me = rustix::process::geteuid().as_raw();
            if me == 0 { vec![0] } else { vec![0, me] }
        });
        KeyFilePolicy { max_size, owners }
    }
}

/// Read `rel` under the medium mounted at `root`.
pub fn read(root: &Path, rel: &str, policy: &KeyFilePolicy) -> Result<SecretBytes> {
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Error::io(
            e.into(),
            format!("opening the medium at '{}'", root.display()),
        )
    })?;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_XDEV | ResolveFlags::NO_MAGICLINKS;
    let fd = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        resolve,
    )
    .map_err(|e| match e {
        rustix::io::Errno::XDEV | rustix::io::Errno::LOOP => Error::new(
            vmcrypt_error::ErrorKind::Unsupported,
            format!("key file '{rel}' leads out of the medium (symlink, '..' or mount); refused"),
        ),
        e => Error::io(e.into(), format!("opening key file '{rel}'")),
    })?;
    let st =
        rustix::fs::fstat(&fd).map_err(|e| Error::io(e.into(), format!("key file '{rel}'")))?;
    check_stat(rel, &st, policy)?;
    let mut file = std::fs::File::from(fd);
    let mut buf = Zeroizing::new(Vec::with_capacity(st.st_size as usize + 1));
    (&mut file)
        .take(policy.max_size + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(e, format!("reading key file '{rel}'")))?;
    ensure!(
        buf.len() as u64 <= policy.max_size,
        LimitExceeded,
        "key file '{rel}' grew past {} bytes while read; refused",
        policy.max_size
    );
    ensure!(!buf.is_empty(), Usage, "key file '{rel}' is empty");
    Ok(SecretBytes::from_slice(&buf))
}

fn check_stat(rel: &str, st: &rustix::fs::Stat, policy: &KeyFilePolicy) -> Result<()> {
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    ensure!(
        kind == rustix::fs::FileType::RegularFile,
        Usage,
        "key file '{rel}' is not a regular file"
    );
    if !policy.owners.contains(&st.st_uid) {
        bail!(
            Usage,
            "key file '{rel}' is owned by uid {}, not by an allowed owner {:?}",
            st.st_uid,
            policy.owners
        );
    }
    ensure!(
        st.st_mode & 0o022 == 0,
        Usage,
        "key file '{rel}' is writable by group or others (mode {:o}); refused",
        st.st_mode & 0o7777
    );
    ensure!(
        (st.st_size as u64) <= policy.max_size,
        LimitExceeded,
        "key file '{rel}' has {} bytes, more than the cap of {}",
        st.st_size,
        policy.max_size
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn policy() -> KeyFilePolicy {
        KeyFilePolicy::new(64, None)
    }

    fn write(dir: &Path, name: &str, data: &[u8], mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn reads_a_good_file_and_refuses_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret", b"outside", 0o600);
        let m = t.path();
        std::fs::create_dir(m.join("sub")).unwrap();
        write(m, "good.key", b"hunter2", 0o600);
        write(&m.join("sub"), "inner.key", b"inner", 0o400);
        write(m, "loose.key", b"x", 0o666);
        write(m, "big.key", &[7u8; 65], 0o600);
        write(m, "empty.key", b"", 0o600);
        std::os::unix::fs::symlink(outside.path().join("secret"), m.join("out.key")).unwrap();
        std::os::unix::fs::symlink("sub/inner.key", m.join("in.key")).unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", m.join("proc.key")).unwrap();

        assert_eq!(
            read(m, "good.key", &policy()).unwrap().as_bytes(),
            b"hunter2"
        );
        assert_eq!(
            read(m, "sub/inner.key", &policy()).unwrap().as_bytes(),
            b"inner"
        );
        // A symlink that stays on the medium is followed.
        assert_eq!(read(m, "in.key", &policy()).unwrap().as_bytes(), b"inner");
        for (name, want) in [
            ("out.key", "out of the medium"),
            ("proc.key", "out of the medium"),
            ("../x", "out of the medium"),
            ("loose.key", "writable by group"),
            ("big.key", "more than the cap"),
            ("empty.key", "empty"),
            ("sub", "not a regular file"),
            ("missing.key", "missing.key"),
        ] {
            let Err(e) = read(m, name, &policy()) else {
                panic!("read {name}")
            };
            let e = e.display_chain();
            assert!(e.contains(want), "{name}: {e}");
        }
        let stranger = KeyFilePolicy {
            max_size: 64,
            owners: vec![4242],
        };
        let e = read(m, "good.key", &stranger).unwrap_err().display_chain();
        assert!(e.contains("not by an allowed owner"), "{e}");
    }
}
