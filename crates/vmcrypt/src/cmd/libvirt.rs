//! `vmcrypt libvirt disk-xml`: print the libvirt `<disk>` element for an export of
//! `vmcrypt serve` (built by `vmcrypt_block::jobs::glue::libvirt`).
use clap::{Args, Subcommand};
use vmcrypt_block::jobs::glue::libvirt::{DiskXmlRequest, disk_xml};
use vmcrypt_error::Result;

/// `vmcrypt libvirt ...`.
#[derive(Subcommand, Debug)]
pub enum LibvirtCommand {
    /// Print a libvirt <disk> element for an NBD export of `vmcrypt serve`
    DiskXml(DiskXmlArgs),
}

/// Arguments of `vmcrypt libvirt disk-xml`.
#[derive(Args, Debug)]
pub struct DiskXmlArgs {
    /// Unix socket the server listens on (`vmcrypt serve --socket PATH`)
    #[arg(long, value_name = "PATH", conflicts_with_all = ["host", "port"])]
    pub socket: Option<String>,
    /// TCP host name or address of the server
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// TCP port of the server (default 10809)
    #[arg(long, value_name = "PORT", requires = "host")]
    pub port: Option<u16>,
    /// Export name (default: the default export "")
    #[arg(long, value_name = "NAME", default_value = "")]
    pub export: String,
    /// Guest device name
    #[arg(long, value_name = "DEV", default_value = "vdb")]
    pub target: String,
    /// Guest bus
    #[arg(long, value_name = "BUS", default_value = "virtio")]
    pub bus: String,
    /// Connect with TLS (libvirt's default TLS environment for NBD)
    #[arg(long)]
    pub tls: bool,
    /// Give the guest a read-only disk
    #[arg(long = "read-only")]
    pub read_only: bool,
}

pub fn run(cmd: &LibvirtCommand) -> Result<u8> {
    match cmd {
        LibvirtCommand::DiskXml(a) => {
            print!(
                "{}",
                disk_xml(&DiskXmlRequest {
                    socket: a.socket.as_deref(),
                    host: a.host.as_deref(),
                    port: a.port,
                    export: &a.export,
                    target: &a.target,
                    bus: &a.bus,
                    tls: a.tls,
                    read_only: a.read_only,
                })?
            );
            Ok(0)
        }
    }
}
