//! Scratch images for the jobs' unit tests.
use super::create_request::{CreateRequest, plan};
use super::{Env, NoEvents};

/// A temporary directory to make images in.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The path of `name` in the directory.
    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A file `name` holding `bytes`; returns its path.
    pub(crate) fn raw(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("writing a scratch image");
        path
    }

    /// Create `name` with the create job (`req` gives everything but the filename).
    pub(crate) fn create(&self, name: &str, req: CreateRequest) -> String {
        let path = self.path(name);
        let req = CreateRequest {
            filename: Some(path.clone()),
            ..req
        };
        let env = Env::default();
        let plan = plan(&req, &env, &mut NoEvents).expect("create plan");
        plan.run(&env).expect("creating a scratch image");
        path
    }
}

/// A request for a `format` image of `size`.
pub(crate) fn sized(format: &str, size: &str) -> CreateRequest {
    CreateRequest {
        format: format.into(),
        size: Some(size.into()),
        ..CreateRequest::default()
    }
}
