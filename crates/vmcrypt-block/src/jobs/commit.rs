//! The `commit` job (`qemu-img commit`): the image's data goes into its backing file
//! (opened read-write, with its own key from `backing.encrypt.key-secret`), then the
//! image is emptied unless asked to keep it.
use super::image_arg::Access;
use super::{Env, Events, ImageArg};
use crate::graph::{self, OpenContext};
use vmcrypt_error::Result;

/// What `vmcrypt commit` was asked for.
#[derive(Clone, Debug, Default)]
pub struct CommitRequest {
    pub image: ImageArg,
    /// `-d`: do not empty the image afterwards.
    pub keep: bool,
}

/// Commit the image of `req` into its backing file; progress in bytes goes to `events`.
pub fn run(req: &CommitRequest, env: &Env, events: &mut dyn Events) -> Result<()> {
    let spec = req.image.spec()?;
    let ctx = OpenContext {
        writable_backing: true,
        ..env.ctx(Access::WRITE)
    };
    let node = graph::open(&spec, &ctx)?;
    node.commit(req.keep, &mut |d, t| events.progress(d, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NoEvents;

    #[test]
    fn raw_images_cannot_be_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let req = CommitRequest {
            image: ImageArg::file(&path.display().to_string(), Some("raw")),
            keep: false,
        };
        assert!(run(&req, &Env::default(), &mut NoEvents).is_err());
    }
}
