//! libvirt's secret XML (formatsecret.html): parse what `virsh secret-define` accepts
//! and print what `virsh secret-dumpxml` prints.
//!
//! ```xml
//! <secret ephemeral='no' private='yes'>
//!   <uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid>
//!   <description>LUKS passphrase of the mail server's disk</description>
//!   <usage type='volume'>
//!     <volume>/var/lib/libvirt/images/mail.img</volume>
//!   </usage>
//! </secret>
//! ```
use crate::uuid::Uuid;
use std::fmt::Write as _;
use vmcrypt_error::{Error, Result, bail, ensure};

/// What a secret is for: the usage type and its identifier (volume path, ceph/tls/vtpm
/// name, iSCSI target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Usage {
    Volume(String),
    Ceph(String),
    Iscsi(String),
    Tls(String),
    Vtpm(String),
}

impl Usage {
    /// The `type` attribute.
    pub fn kind(&self) -> &'static str {
        match self {
            Usage::Volume(_) => "volume",
            Usage::Ceph(_) => "ceph",
            Usage::Iscsi(_) => "iscsi",
            Usage::Tls(_) => "tls",
            Usage::Vtpm(_) => "vtpm",
        }
    }

    /// The usage identifier (the element's text).
    pub fn id(&self) -> &str {
        match self {
            Usage::Volume(s)
            | Usage::Ceph(s)
            | Usage::Iscsi(s)
            | Usage::Tls(s)
            | Usage::Vtpm(s) => s,
        }
    }

    /// The child element holding the identifier.
    fn element(&self) -> &'static str {
        match self {
            Usage::Volume(_) => "volume",
            Usage::Iscsi(_) => "target",
            _ => "name",
        }
    }

    /// A usage from its type and identifier.
    pub fn new(kind: &str, id: String) -> Result<Usage> {
        Ok(match kind {
            "volume" => Usage::Volume(id),
            "ceph" => Usage::Ceph(id),
            "iscsi" => Usage::Iscsi(id),
            "tls" => Usage::Tls(id),
            "vtpm" => Usage::Vtpm(id),
            other => bail!(
                Usage,
                "unknown secret usage type '{other}' (volume, ceph, iscsi, tls or vtpm)"
            ),
        })
    }

    /// `TYPE:ID`, e.g. `volume:/var/lib/images/a.img` (how `--object` names it).
    pub fn parse_ref(s: &str) -> Result<Usage> {
        let (kind, id) = s.split_once(':').ok_or_else(|| {
            Error::usage(format!(
                "secret usage '{s}' must be TYPE:ID, e.g. volume:/path/disk.img"
            ))
        })?;
        ensure!(
            !id.is_empty(),
            Usage,
            "secret usage '{s}' has an empty identifier"
        );
        Usage::new(kind, id.to_string())
    }

    /// virsh's list column: `volume /path`, `ceph name`, ...
    pub fn display(&self) -> String {
        format!("{} {}", self.kind(), self.id())
    }
}

/// One secret's definition (its metadata; the value is kept apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretDef {
    pub uuid: Uuid,
    pub description: Option<String>,
    pub usage: Option<Usage>,
    /// Kept only in memory, never stored.
    pub ephemeral: bool,
    /// The value is never revealed to a caller.
    pub private: bool,
}

impl SecretDef {
    /// Parse a `<secret>` document; a missing `<uuid>` is generated.
    pub fn parse(xml: &str) -> Result<SecretDef> {
        let doc = roxmltree::Document::parse(xml)
            .map_err(|e| Error::usage(format!("invalid secret XML: {e}")))?;
        let root = doc.root_element();
        ensure!(
            root.has_tag_name("secret"),
            Usage,
            "unexpected root element <{}>, expecting <secret>",
            root.tag_name().name()
        );
        let ephemeral = yes_no(root, "ephemeral")?;
        let private = yes_no(root, "private")?;
        let uuid = match child_text(root, "uuid")? {
            Some(u) => u.parse()?,
            None => Uuid::random()?,
        };
        let description = child_text(root, "description")?;
        let usage = match only_child(root, "usage")? {
            Some(u) => Some(parse_usage(u)?),
            None => None,
        };
        Ok(SecretDef {
            uuid,
            description,
            usage,
            ephemeral,
            private,
        })
    }

    /// The document as `virsh secret-dumpxml` prints it.
    pub fn to_xml(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut s = format!(
            "<secret ephemeral='{}' private='{}'>\n  <uuid>{}</uuid>\n",
            yn(self.ephemeral),
            yn(self.private),
            self.uuid
        );
        if let Some(d) = &self.description {
            let _ = writeln!(s, "  <description>{}</description>", escape(d));
        }
        if let Some(u) = &self.usage {
            let el = u.element();
            let _ = write!(
                s,
                "  <usage type='{}'>\n    <{el}>{}</{el}>\n  </usage>\n",
                u.kind(),
                escape(u.id())
            );
        }
        s.push_str("</secret>\n");
        s
    }
}

fn yes_no(node: roxmltree::Node, attr: &str) -> Result<bool> {
    match node.attribute(attr) {
        None | Some("no") => Ok(false),
        Some("yes") => Ok(true),
        Some(v) => bail!(
            Usage,
            "invalid value '{v}' of secret attribute '{attr}' (yes or no)"
        ),
    }
}

fn only_child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &str,
) -> Result<Option<roxmltree::Node<'a, 'i>>> {
    let mut it = node.children().filter(|c| c.has_tag_name(name));
    let first = it.next();
    ensure!(
        it.next().is_none(),
        Usage,
        "secret XML has more than one <{name}> element"
    );
    Ok(first)
}

fn child_text(node: roxmltree::Node, name: &str) -> Result<Option<String>> {
    Ok(only_child(node, name)?.map(|c| c.text().unwrap_or("").to_string()))
}

fn parse_usage(node: roxmltree::Node) -> Result<Usage> {
    let kind = node
        .attribute("type")
        .ok_or_else(|| Error::usage("<usage> has no 'type' attribute"))?;
    let probe = Usage::new(kind, String::new())?;
    let el = probe.element();
    let id = child_text(node, el)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::usage(format!("<usage type='{kind}'> needs a <{el}> element")))?;
    Usage::new(kind, id)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of libvirt's formatsecret page, one per usage type (re-typed).
    const VOLUME: &str = "<secret ephemeral='no' private='yes'>\n   \
        <description>Super secret name of my first puppy</description>\n   \
        <uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid>\n   \
        <usage type='volume'>\n      <volume>/var/lib/libvirt/images/puppyname.img</volume>\n   \
        </usage>\n</secret>\n";

    #[test]
    fn libvirt_examples_parse() {
        let d = SecretDef::parse(VOLUME).unwrap();
        assert!(d.private && !d.ephemeral);
        assert_eq!(d.uuid.to_string(), "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f");
        assert_eq!(
            d.description.as_deref(),
            Some("Super secret name of my first puppy")
        );
        assert_eq!(
            d.usage,
            Some(Usage::Volume(
                "/var/lib/libvirt/images/puppyname.img".into()
            ))
        );
        let ceph = "<secret ephemeral='no' private='no'>\n<description>CEPH passphrase example</description>\n\
            <usage type='ceph'>\n<name>ceph_example</name>\n</usage>\n</secret>";
        let d = SecretDef::parse(ceph).unwrap();
        assert_eq!(d.usage, Some(Usage::Ceph("ceph_example".into())));
        let iscsi = "<secret ephemeral='no' private='yes'><usage type='iscsi'>\
            <target>libvirtiscsi</target></usage></secret>";
        assert_eq!(
            SecretDef::parse(iscsi).unwrap().usage,
            Some(Usage::Iscsi("libvirtiscsi".into()))
        );
        let tls = "<secret ephemeral='no' private='yes'><usage type='tls'><name>TLS_example</name></usage></secret>";
        assert_eq!(
            SecretDef::parse(tls).unwrap().usage,
            Some(Usage::Tls("TLS_example".into()))
        );
        let vtpm = "<secret ephemeral='yes' private='yes'><usage type='vtpm'><name>VTPM_example</name></usage></secret>";
        let d = SecretDef::parse(vtpm).unwrap();
        assert!(d.ephemeral);
        assert_eq!(d.usage, Some(Usage::Vtpm("VTPM_example".into())));
    }

    #[test]
    fn prints_like_dumpxml_and_round_trips() {
        let d = SecretDef::parse(VOLUME).unwrap();
        let expect = "<secret ephemeral='no' private='yes'>\n  \
            <uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid>\n  \
            <description>Super secret name of my first puppy</description>\n  \
            <usage type='volume'>\n    <volume>/var/lib/libvirt/images/puppyname.img</volume>\n  \
            </usage>\n</secret>\n";
        assert_eq!(d.to_xml(), expect);
        let odd = SecretDef {
            description: Some("a & <b> 'c'".into()),
            usage: Some(Usage::Iscsi("t\"x".into())),
            ..d
        };
        assert_eq!(SecretDef::parse(&odd.to_xml()).unwrap(), odd);
    }

    #[test]
    fn missing_uuid_generated_and_bad_input_refused() {
        let a = SecretDef::parse("<secret/>").unwrap();
        let b = SecretDef::parse("<secret/>").unwrap();
        assert_ne!(a.uuid, b.uuid);
        assert_eq!(a.usage, None);
        for (bad, what) in [
            ("<secrets/>", "expecting <secret>"),
            ("<secret private='maybe'/>", "private"),
            ("<secret><uuid>nope</uuid></secret>", "malformed uuid"),
            (
                "<secret><usage type='disk'><name>x</name></usage></secret>",
                "unknown secret usage type 'disk'",
            ),
            (
                "<secret><usage type='volume'><name>x</name></usage></secret>",
                "needs a <volume>",
            ),
            (
                "<secret><usage><volume>x</volume></usage></secret>",
                "no 'type'",
            ),
            (
                "<secret><uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid><uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid></secret>",
                "more than one <uuid>",
            ),
            ("<secret>", "invalid secret XML"),
        ] {
            let e = SecretDef::parse(bad).unwrap_err();
            assert!(e.to_string().contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn usage_refs() {
        assert_eq!(
            Usage::parse_ref("volume:/a/b.img").unwrap(),
            Usage::Volume("/a/b.img".into())
        );
        assert!(Usage::parse_ref("volume").is_err());
        assert!(Usage::parse_ref("volume:").is_err());
        assert!(Usage::parse_ref("disk:x").is_err());
        assert_eq!(Usage::Ceph("c".into()).display(), "ceph c");
    }
}
