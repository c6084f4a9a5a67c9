//! `secret push`: define a stored secret in a running libvirt (its XML, then its value),
//! so libvirt's own `<encryption format='luks'>` disks can use it with no vmcrypt
//! process in the data path.
//!
//! libvirt is reached through `virsh` (package libvirt-clients), as an administrator
//! would. Neither the XML nor the value goes through argv, the environment or a file:
//! `virsh secret-define /dev/stdin` and `virsh secret-set-value UUID --file /dev/stdin
//! --plain` read them from a pipe (virsh opens the path, which for a pipe reopens the
//! same pipe). A secret that this push created is undefined again when setting its value
//! fails, so a failed push leaves no valueless secret behind.
use crate::store::Store;
use crate::uuid::Uuid;
use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use vmcrypt_error::{Error, Result, ensure};

/// The program run to reach libvirt; `$VMCRYPT_VIRSH` names another one.
pub const VIRSH_ENV: &str = "VMCRYPT_VIRSH";

/// The largest value `virsh secret-set-value --file` reads.
pub const VIRSH_MAX_VALUE: usize = 1024;

/// How to push a secret.
#[derive(Clone, Debug)]
pub struct PushRequest<'a> {
    /// libvirt connection URI, e.g. `qemu:///system`.
    pub uri: &'a str,
    /// Define the secret ephemeral in libvirt (kept only in libvirtd's memory, never
    /// written under /etc/libvirt/secrets), whatever the stored definition says.
    pub ephemeral: bool,
    /// The virsh to run; `None`: `$VMCRYPT_VIRSH`, else `virsh` on PATH.
    pub virsh: Option<&'a std::path::Path>,
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// libvirt had no secret with this UUID before.
    pub created: bool,
    pub private: bool,
    pub ephemeral: bool,
    /// The value is UTF-8 without NUL bytes. QEMU takes nothing else as a LUKS
    /// passphrase ("Data from secret ... is not valid UTF-8"), so a disk of libvirt's
    /// cannot use a value that is not.
    pub text: bool,
}

/// Define secret `uuid` of `store` (definition and value) in the libvirt at `req.uri`.
/// The store is read first, so an unknown UUID or a missing value fails before libvirt
/// is asked anything.
pub fn push(store: &Store, uuid: &Uuid, req: &PushRequest<'_>) -> Result<Pushed> {
    let mut def = store.definition(uuid)?;
    let value = store.value_for_use(uuid)?;
    ensure!(
        value.len() <= VIRSH_MAX_VALUE,
        LimitExceeded,
        "secret {uuid}: the value is {} bytes; virsh secret-set-value takes at most {VIRSH_MAX_VALUE}",
        value.len()
    );
    def.ephemeral |= req.ephemeral;
    let virsh = Virsh::new(req.uri, req.virsh);
    virsh.check_connection()?;
    let uuid_s = uuid.to_string();
    let created = virsh.run(&["secret-dumpxml", &uuid_s], None).is_err();
    virsh
        .run(
            &["secret-define", "/dev/stdin"],
            Some(def.to_xml().as_bytes()),
        )
        .map_err(|e| {
            let hint = if e
                .display_chain()
                .contains("not supported by the connection driver")
            {
                " (libvirtd has no secret driver: Debian package libvirt-daemon-driver-secret)"
            } else {
                ""
            };
            e.context(format!("cannot define secret {uuid} in libvirt{hint}"))
        })?;
    let set = virsh.run(
        &[
            "secret-set-value",
            &uuid_s,
            "--file",
            "/dev/stdin",
            "--plain",
        ],
        Some(value.as_bytes()),
    );
    if let Err(e) = set {
        if created {
            let _ = virsh.run(&["secret-undefine", &uuid_s], None);
        }
        return Err(e.context(format!("cannot set the value of secret {uuid} in libvirt")));
    }
    Ok(Pushed {
        created,
        private: def.private,
        ephemeral: def.ephemeral,
        text: std::str::from_utf8(value.as_bytes()).is_ok_and(|t| !t.contains('\0')),
    })
}

/// `virsh -c URI ...`, with an optional stdin.
struct Virsh<'a> {
    program: OsString,
    uri: &'a str,
}

impl<'a> Virsh<'a> {
    fn new(uri: &'a str, program: Option<&std::path::Path>) -> Virsh<'a> {
        let program = program
            .map(|p| p.as_os_str().to_owned())
            .or_else(|| std::env::var_os(VIRSH_ENV))
            .unwrap_or_else(|| "virsh".into());
        Virsh { program, uri }
    }

    /// Fail early, and clearly, when libvirt is not there.
    fn check_connection(&self) -> Result<()> {
        self.run(&["uri"], None).map(drop).map_err(|e| {
            e.context(format!(
                "cannot connect to libvirt at '{}' (is libvirtd running, is the URI right?)",
                self.uri
            ))
        })
    }

    /// Run one virsh command; its stdout on success, its stderr in the error.
    fn run(&self, args: &[&str], input: Option<&[u8]>) -> Result<String> {
        let name = self.program.to_string_lossy().into_owned();
        let mut child = Command::new(&self.program)
            .args(["-q", "-c", self.uri])
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    " (libvirt's client, Debian package libvirt-clients, is not installed)"
                } else {
                    ""
                };
                Error::io(e, format!("cannot run '{name}'{hint}"))
            })?;
        // The value is small (virsh takes at most 1 KiB), well under a pipe's buffer; a
        // virsh that exits without reading it is judged by its status below.
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(bytes);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(e, format!("cannot wait for '{name}'")))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = stderr
            .lines()
            .map(|l| l.trim().trim_start_matches("error: "))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        Err(Error::io(
            std::io::Error::other(if msg.is_empty() {
                format!("exit status {}", out.status)
            } else {
                msg
            }),
            format!("virsh {} failed", args[0]),
        ))
    }
}
