//! The `commit` job (`qemu-img commit`): the image's data goes into its backing file
//! (opened read-write, with its own key from `backing.encrypt.key-secret`), then the
//! image is emptied unless asked to keep it.
use super::image_arg::Access;
use super::{Env, Events, ImageArg};
use crate::graph::{self, OpenContext};
use vmcrypt_error::{Result, bail};

/// What `vmcrypt commit` was asked for.
#[derive(Clone, Debug, Default)]
pub struct CommitRequest {
    pub image: ImageArg,
    /// `-d`: do not empty the image afterwards.
    pub keep: bool,
}

/// Commit the image of `req` into its backing file; progress in bytes goes to `events`.
pub fn run(req: &CommitRequest, env: &Env, events: &mut dyn Events) -> Result<()> {
    let ctx = OpenContext {
        writable_backing: true,
        ..req.image.context(env, Access::WRITE)?
    };
    let spec = req.image.to_spec()?;
    let node = graph::open(&spec, &ctx)?;
    let Some(top) = node.as_commit() else {
        bail!(
            Unsupported,
            "driver '{}' has no backing file to commit into",
            node.driver_name()
        );
    };
    top.commit(req.keep, &mut |d, t| events.progress(d, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NoEvents;
    use crate::jobs::create_request::CreateRequest;
    use crate::jobs::testutil::Scratch;

    #[test]
    fn raw_images_cannot_be_committed() {
        let sc = Scratch::new();
        let req = CommitRequest {
            image: ImageArg::file(&sc.raw("img", &[0u8; 4096]), Some("raw")),
            keep: false,
        };
        assert!(run(&req, &Env::default(), &mut NoEvents).is_err());
    }

    #[test]
    fn overlay_data_goes_into_the_base() {
        let sc = Scratch::new();
        let base = sc.raw("base", &[0u8; 65536]);
        let overlay = CreateRequest {
            format: "qcow2".into(),
            backing: Some("base".into()),
            backing_format: Some("raw".into()),
            ..CreateRequest::default()
        };
        let arg = ImageArg::file(&sc.create("top", overlay), Some("qcow2"));
        let env = Env::default();
        let node = arg.open(&env, Access::WRITE, &mut NoEvents).unwrap();
        node.write_at(&[9u8; 512], 1024).unwrap();
        node.flush().unwrap();
        drop(node);
        let req = CommitRequest {
            image: arg,
            keep: true,
        };
        run(&req, &env, &mut NoEvents).unwrap();
        let bytes = std::fs::read(&base).unwrap();
        assert_eq!(&bytes[1024..1536], &[9u8; 512]);
        assert!(bytes[..1024].iter().all(|&b| b == 0));
    }
}
