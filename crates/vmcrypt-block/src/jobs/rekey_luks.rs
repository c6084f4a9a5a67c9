//! A new volume key for a LUKS1 image file, crash-safe by copy and rename.
//!
//! Re-encrypting a LUKS1 payload in place needs a journal (that is what LUKS2's
//! reencryption metadata is for). Offline, with room for a second copy, there is a
//! simpler way: [`super::clone`] writes the data under a fresh volume key into
//! `IMAGE.rekey-tmp` beside the image (same UUID, cipher and hash unless `-o` says
//! otherwise, the original's permission bits and, where allowed, owner), the copy is
//! flushed, then renamed over the image and the directory flushed. Until the rename
//! the original is untouched (a leftover temporary file is refused next time, naming
//! it); after it, the new image is complete. The original stays open with its read
//! lock until the rename, so no writer can slip in between.
use super::clone::{CloneRequest, run_with_options};
use super::image_arg::Access;
use super::{Env, Events, ImageArg};
use crate::drivers::file::FileDriver;
use crate::spec::{LuksSpec, NodeSpec};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use vmcrypt_error::{Error, Result, ResultExt, bail, ensure};

/// Re-key the LUKS image `image` (spec `l`) with the new header's options `new`;
/// returns the bytes copied.
pub(super) fn rekey_by_copy(
    image: &ImageArg,
    l: &LuksSpec,
    mut new: Map<String, Value>,
    env: &Env,
    events: &mut dyn Events,
) -> Result<u64> {
    ensure!(
        l.header.is_none(),
        Unsupported,
        "rekey of a LUKS image with a detached header is not supported"
    );
    let NodeSpec::File(f) = l.file.as_ref() else {
        bail!(
            Unsupported,
            "rekey of a LUKS image needs it in a file (file.filename=PATH)"
        );
    };
    let path = PathBuf::from(&f.filename);
    let meta = image.open(env, Access::METADATA, events)?;
    let info = meta
        .as_introspect()
        .and_then(|i| i.format_specific())
        .unwrap_or_default();
    drop(meta);
    ensure!(
        info.get("version").is_none(),
        Unsupported,
        "'{}' is LUKS2: give it a new volume key with 'vmcrypt luks reencrypt'",
        path.display()
    );
    if let Some(uuid) = info.get("uuid").filter(|u| u.is_string()) {
        new.entry("uuid").or_insert_with(|| uuid.clone());
    }
    let tmp = temp_path(&path);
    ensure!(
        !tmp.exists(),
        Busy,
        "'{}' exists (left by an interrupted rekey, or in use): remove it first",
        tmp.display()
    );
    // Held (read lock, no writers) until the rename.
    let hold = FileDriver::open_with(&path, true, f.locks())?;
    let req = CloneRequest {
        source: image.clone(),
        target: tmp.display().to_string(),
        out_format: Some("luks".into()),
        ..CloneRequest::default()
    };
    let copied = run_with_options(&req, new, env, events)
        .and_then(|r| finish(&path, &tmp).map(|()| r))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    drop(hold);
    Ok(copied.copy.map_or(0, |c| c.stats.bytes_written))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".rekey-tmp");
    path.with_file_name(name)
}

/// Give the copy the original's mode (and owner, where allowed), flush it, rename it
/// over the original and flush the directory.
fn finish(path: &Path, tmp: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let io = |what: &str, p: &Path| {
        let what = format!("{what} '{}'", p.display());
        move |e| Error::io(e, what)
    };
    let orig = std::fs::metadata(path).map_err(io("reading the metadata of", path))?;
    std::fs::set_permissions(tmp, orig.permissions()).map_err(io("setting the mode of", tmp))?;
    // Only root may give a file away; anyone else's copy is theirs already.
    let _ = std::os::unix::fs::chown(tmp, Some(orig.uid()), Some(orig.gid()));
    let f = std::fs::File::open(tmp).map_err(io("opening", tmp))?;
    f.sync_all().map_err(io("flushing", tmp))?;
    std::fs::rename(tmp, path).map_err(io("renaming the re-keyed copy over", path))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("flushing the directory", dir))
        .ctx("the image was re-keyed, but the rename may not be durable yet")
}
