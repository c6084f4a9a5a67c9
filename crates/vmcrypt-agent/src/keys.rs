//! Fetching one key from one source: the secret store (by UUID or usage), a key file on
//! a present medium ([`crate::keyfile`]), or a prompt through systemd-ask-password (its
//! answer read from a pipe, never from argv). The caller gets the bytes in a zeroized
//! buffer and drops them as soon as the export daemon has them.
use crate::config::{KeySource, PromptConfig, StoreConfig};
use crate::keyfile::{self, KeyFilePolicy};
use crate::media::Present;
use crate::unlock::Progress;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, bail};
use vmcrypt_secrets::{MasterKeyConfig, Store, Usage, Uuid};
use zeroize::Zeroizing;

/// Everything a key source may need.
pub struct KeyContext<'a> {
    pub store: &'a StoreConfig,
    pub prompt: &'a PromptConfig,
    pub policy: &'a KeyFilePolicy,
    pub media: &'a Present,
    /// Whether prompting is allowed now (an explicit `unlock`, not an automatic one).
    pub interactive: bool,
    /// The prompt's id (`vmcrypt:VM:DISK`), so an agent can tell requests apart.
    pub prompt_id: String,
    /// The unlock this key is for: a prompt is killed when it is cancelled.
    pub progress: Option<&'a Progress>,
}

/// Whether `src` can give a key now without asking anyone.
pub fn available(src: &KeySource, media: &Present) -> bool {
    match src {
        KeySource::StoreUuid(_) | KeySource::StoreUsage(_) => true,
        KeySource::File { medium, .. } => media.contains_key(medium),
        KeySource::Ask(_) => false,
    }
}

/// The key `src` holds.
pub fn fetch(src: &KeySource, cx: &KeyContext) -> Result<SecretBytes> {
    match src {
        KeySource::StoreUuid(u) => store(cx.store).value_for_use(&u.parse::<Uuid>()?),
        KeySource::StoreUsage(u) => store(cx.store).value_for_usage(&Usage::parse_ref(u)?),
        KeySource::File { medium, path } => {
            let Some(root) = cx.media.get(medium) else {
                bail!(NotFound, "{medium} is not present");
            };
            keyfile::read(root, path, cx.policy)
        }
        KeySource::Ask(text) => {
            if !cx.interactive {
                bail!(
                    NotFound,
                    "a prompt is only shown for `vmcrypt agent unlock`"
                );
            }
            ask(cx.prompt, text, &cx.prompt_id, cx.progress)
        }
    }
}

fn store(c: &StoreConfig) -> Store {
    Store::new(
        c.dir.clone(),
        MasterKeyConfig::from_env(
            c.master_key_file.clone(),
            c.master_key_passphrase_file.clone(),
        ),
    )
}

/// Ask through systemd-ask-password: the answer comes on its stdout, one line.
fn ask(p: &PromptConfig, text: &str, id: &str, progress: Option<&Progress>) -> Result<SecretBytes> {
    let mut child = Command::new(&p.command)
        .arg(format!("--timeout={}", p.timeout))
        .arg(format!("--id={id}"))
        .arg(text)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(e, format!("starting '{}'", p.command.display())))?;
    if let Some(p) = progress
        && !p.watch_prompt(child.id())
    {
        let _ = child.kill();
    }
    let mut out = Zeroizing::new(Vec::new());
    let read = match child.stdout.take() {
        // The program's own timeout (or a cancel, which kills it) bounds this read.
        Some(o) => o.take(64 * 1024).read_to_end(&mut out).map(drop),
        None => Ok(()),
    };
    if let Some(p) = progress {
        p.prompt_done();
    }
    read.map_err(|e| Error::io(e, "reading the answer to the prompt"))?;
    let status = crate::proc::wait_for(&mut child, Duration::from_secs(p.timeout + 5))?;
    if !status.success() {
        bail!(NotFound, "the prompt was not answered ({status})");
    }
    let end = out.iter().position(|b| *b == b'\n').unwrap_or(out.len());
    if end == 0 {
        bail!(NotFound, "the prompt's answer was empty");
    }
    Ok(SecretBytes::from_slice(&out[..end]))
}
