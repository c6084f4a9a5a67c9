//! `vmcrypt secret push --connect URI UUID`: define a stored secret (XML and value) in
//! a running libvirt, so its `<encryption format='luks'>` disks use it
//! (`vmcrypt_secrets::libvirt::push`).
use super::{StoreOpts, parse_uuid};
use vmcrypt_error::Result;
use vmcrypt_secrets::libvirt::{PushRequest, push};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The secret's UUID
    pub uuid: String,
    /// libvirt connection URI, e.g. qemu:///system
    #[arg(short = 'c', long = "connect", value_name = "URI")]
    pub connect: String,
    /// Define it ephemeral in libvirt: kept in libvirtd's memory only, never written
    /// to libvirt's own (unencrypted) secret files; push again after libvirtd restarts
    #[arg(long = "ephemeral")]
    pub ephemeral: bool,
    #[command(flatten)]
    pub store: StoreOpts,
}

pub fn run(a: &Args) -> Result<()> {
    let uuid = parse_uuid(&a.uuid)?;
    let req = PushRequest {
        uri: &a.connect,
        ephemeral: a.ephemeral,
        virsh: None,
    };
    let p = push(&a.store.store(), &uuid, &req)?;
    let flags = [(p.private, "private"), (p.ephemeral, "ephemeral")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>();
    outln!(
        "Secret {uuid} {} in {}{}",
        if p.created { "created" } else { "updated" },
        a.connect,
        if flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", flags.join(", "))
        }
    );
    if !p.text {
        eprintln!(
            "warning: secret {uuid}: the value is not UTF-8 text without NUL bytes; QEMU \
             refuses such a value as a LUKS passphrase, so libvirt's disks cannot use it"
        );
    }
    Ok(())
}
