//! The libvirt `<disk>` element for an NBD export of `vmcrypt serve`
//! (`vmcrypt libvirt disk-xml`).
use vmcrypt_error::{Error, Result, bail, ensure};

/// Where the export is and how the guest sees it.
#[derive(Clone, Copy, Debug)]
pub struct DiskXmlRequest<'a> {
    /// Unix socket the server listens on (exclusive with `host`).
    pub socket: Option<&'a str>,
    /// TCP host name or address of the server.
    pub host: Option<&'a str>,
    /// TCP port of the server (default 10809).
    pub port: Option<u16>,
    /// Export name ("" for the default export).
    pub export: &'a str,
    /// Guest device name (vdb, sda, ...).
    pub target: &'a str,
    /// Guest bus, one of [`BUSES`].
    pub bus: &'a str,
    /// Connect with TLS.
    pub tls: bool,
    /// Give the guest a read-only disk.
    pub read_only: bool,
}

/// Buses libvirt knows for `<target bus=...>`.
pub const BUSES: &[&str] = &["virtio", "scsi", "sata", "ide", "usb", "sd", "fdc", "xen"];

/// The `<disk>` element for `a`.
pub fn disk_xml(a: &DiskXmlRequest) -> Result<String> {
    ensure!(
        BUSES.contains(&a.bus),
        Usage,
        "--bus '{}' is not a libvirt disk bus ({})",
        a.bus,
        BUSES.join(", ")
    );
    ensure!(
        !a.target.is_empty() && a.target.bytes().all(|b| b.is_ascii_alphanumeric()),
        Usage,
        "--target '{}' must be a device name like vdb or sda",
        a.target
    );
    let host = host_element(a)?;
    let mut source = String::from("<source protocol='nbd'");
    if !a.export.is_empty() {
        source += &format!(" name='{}'", attr(a.export, "--export")?);
    }
    if a.tls {
        source += " tls='yes'";
    }
    let mut x = String::from("<disk type='network' device='disk'>\n");
    x += "  <driver name='qemu' type='raw'/>\n";
    x += &format!("  {source}>\n    {host}\n  </source>\n");
    x += &format!("  <target dev='{}' bus='{}'/>\n", a.target, a.bus);
    if a.read_only {
        x += "  <readonly/>\n";
    }
    x += "</disk>\n";
    Ok(x)
}

/// The `<host>` element: a Unix socket (made absolute) or a TCP host and port.
fn host_element(a: &DiskXmlRequest) -> Result<String> {
    Ok(match (a.socket, a.host) {
        (Some(sock), None) => {
            ensure!(!sock.is_empty(), Usage, "--socket needs a path");
            let abs = std::path::absolute(sock)
                .map_err(|e| Error::usage(format!("--socket '{sock}': {e}")))?;
            let abs = abs
                .to_str()
                .ok_or_else(|| Error::usage(format!("--socket '{sock}' is not UTF-8")))?;
            format!(
                "<host transport='unix' socket='{}'/>",
                attr(abs, "--socket")?
            )
        }
        (None, Some(h)) => {
            ensure!(!h.is_empty(), Usage, "--host needs a name or address");
            let port = a.port.unwrap_or(10809);
            format!("<host name='{}' port='{port}'/>", attr(h, "--host")?)
        }
        (None, None) => bail!(Usage, "give the server's --socket PATH or --host HOST"),
        (Some(_), Some(_)) => bail!(Usage, "--socket and --host are mutually exclusive"),
    })
}

/// `s` escaped for a single-quoted XML attribute; control characters are refused
/// (XML 1.0 cannot carry most of them, and libvirt would normalise the rest).
fn attr(s: &str, what: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '\'' => out += "&apos;",
            '"' => out += "&quot;",
            c if c.is_control() => bail!(
                Usage,
                "{what} contains the control character U+{:04X}, which XML cannot carry",
                c as u32
            ),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml_args() -> DiskXmlRequest<'static> {
        DiskXmlRequest {
            socket: Some("/run/a'b&c.sock"),
            host: None,
            port: None,
            export: "<x>",
            target: "vdb",
            bus: "virtio",
            tls: true,
            read_only: true,
        }
    }

    #[test]
    fn xml_escapes_attributes() {
        let x = disk_xml(&xml_args()).unwrap();
        assert!(x.contains("socket='/run/a&apos;b&amp;c.sock'"), "{x}");
        assert!(x.contains("name='&lt;x&gt;' tls='yes'"), "{x}");
        assert!(x.contains("<readonly/>"), "{x}");
    }

    #[test]
    fn xml_refuses_control_characters_and_unknown_bus() {
        let mut a = xml_args();
        a.export = "a\nb";
        assert!(disk_xml(&a).is_err());
        let mut a = xml_args();
        a.bus = "pci";
        assert!(disk_xml(&a).is_err());
    }
}
