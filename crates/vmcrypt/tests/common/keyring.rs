//! A scratch dir plus the `--object secret,...` arguments that every qemu-img, qemu-io
//! and vmcrypt command on a chain of differently keyed images carries, with the qemu
//! runs the qcow2 chain tests (commit, rebase) share: qemu-io writes, reading an image
//! back as raw and `qemu-img check`.

use super::{Scratch, qemu_img, tool};

/// Key files in a scratch dir and their `--object` arguments.
pub struct Keyring {
    pub sc: Scratch,
    /// `secret,id=ID,file=...`, one per key, in the order given to [`Keyring::new`].
    pub objects: Vec<String>,
}

impl Keyring {
    /// A new scratch dir with one key file per `(id, passphrase)`, named after its id.
    pub fn new(keys: &[(&str, &[u8])]) -> Keyring {
        let sc = Scratch::new();
        let objects = keys
            .iter()
            .map(|(id, pw)| format!("secret,id={id},file={}", sc.write(id, pw)))
            .collect();
        Keyring { sc, objects }
    }

    /// `HEAD... --object O1 --object O2 ... TAIL...`.
    pub fn with_objects<'a>(&'a self, head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
        let mut a: Vec<&str> = head.to_vec();
        for o in &self.objects {
            a.extend(["--object", o.as_str()]);
        }
        a.extend_from_slice(tail);
        a
    }

    /// The `--image-opts` string of the qcow2 scratch file `name` with its own key `key`.
    pub fn qcow2(&self, name: &str, key: &str) -> String {
        format!(
            "driver=qcow2,file.filename={},encrypt.key-secret={key}",
            self.sc.p(name)
        )
    }

    /// `qemu-img create -f qcow2 -o OPTIONS` of the scratch file `name`, `size` long;
    /// panics on failure.
    #[track_caller]
    pub fn create_qcow2(&self, name: &str, options: &str, size: &str) {
        let path = self.sc.p(name);
        qemu_img(&self.with_objects(
            &["create", "-q", "-f", "qcow2"],
            &["-o", options, &path, size],
        ))
        .ok();
    }

    /// Run the qemu-io commands `cmds` on the node `opts` (`--image-opts`); panics on failure.
    #[track_caller]
    pub fn qemu_io(&self, cmds: &[&str], opts: &str) {
        let mut tail: Vec<&str> = Vec::new();
        for c in cmds {
            tail.extend(["-c", c]);
        }
        tail.extend(["--image-opts", opts]);
        tool("qemu-io", &self.with_objects(&[], &tail)).ok();
    }

    /// Plaintext of the node `opts` via qemu-img convert into the scratch file `out`.
    #[track_caller]
    pub fn read(&self, opts: &str, out: &str) -> Vec<u8> {
        let o = self.sc.p(out);
        qemu_img(&self.with_objects(&["convert"], &["--image-opts", opts, "-O", "raw", &o])).ok();
        self.sc.read(out)
    }

    /// `qemu-img check` of the node `opts` must find no errors.
    #[track_caller]
    pub fn check_clean(&self, opts: &str) {
        qemu_img(&self.with_objects(&["check"], &["--image-opts", opts]))
            .ok()
            .stdout_has("No errors were found on the image.");
    }
}
