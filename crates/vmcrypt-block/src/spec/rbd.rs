//! Options of the `rbd` protocol driver: an image in a Ceph pool, QEMU's names
//! (`pool`, `image`, `snapshot`, `conf`, `user`, `namespace`, `key-secret`,
//! `encrypt.format`, `encrypt.key-secret`), and QEMU's pseudo-filename
//! `rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][:conf=PATH][:id=USER]`.
use super::parse::{Tuning, check_keys};
use crate::opts::opt_str;
use serde_json::{Map, Value};
use vmcrypt_error::{Error, Result, bail, ensure};

/// `driver=rbd`.
#[derive(Clone, Debug, PartialEq)]
pub struct RbdSpec {
    pub pool: String,
    pub image: String,
    /// Open this snapshot (read-only).
    pub snapshot: Option<String>,
    /// A ceph.conf (default: librados's search, `$CEPH_CONF`, /etc/ceph/ceph.conf).
    pub conf: Option<String>,
    /// The cephx user without `client.` (default admin).
    pub user: Option<String>,
    pub namespace: Option<String>,
    /// `key-secret`: the `--object secret` holding the cephx key (base64); without it
    /// the keyring named by the conf.
    pub key_secret: Option<String>,
    /// librbd-compatible encryption (`encrypt.format`, `encrypt.key-secret`).
    pub encrypt: Option<RbdEncrypt>,
    pub tuning: Tuning,
}

/// Which LUKS version `encrypt.format` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbdEncryptFormat {
    /// `luks`: LUKS1 (QEMU's name).
    Luks1,
    /// `luks2`.
    Luks2,
    /// `luks-any`: whichever the header is.
    Any,
}

impl RbdEncryptFormat {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "luks" | "luks1" => RbdEncryptFormat::Luks1,
            "luks2" => RbdEncryptFormat::Luks2,
            "luks-any" => RbdEncryptFormat::Any,
            other => bail!(
                Usage,
                "rbd: encrypt.format must be luks, luks2 or luks-any, not '{other}'"
            ),
        })
    }

    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            RbdEncryptFormat::Luks1 => "luks",
            RbdEncryptFormat::Luks2 => "luks2",
            RbdEncryptFormat::Any => "luks-any",
        }
    }
}

/// The `encrypt` options of an rbd node.
#[derive(Clone, Debug, PartialEq)]
pub struct RbdEncrypt {
    pub format: RbdEncryptFormat,
    /// The `--object secret` holding the passphrase (required to read data).
    pub key_secret: Option<String>,
    /// `encrypt.parent.*`: the parent's encryption, for a clone with its own key (Reef's
    /// layered encryption; nested again for a clone of a clone).
    pub parent: Option<Box<RbdEncrypt>>,
}

impl RbdEncrypt {
    fn write_options(&self) -> Map<String, Value> {
        let mut em = Map::new();
        em.insert("format".into(), Value::String(self.format.name().into()));
        if let Some(k) = &self.key_secret {
            em.insert("key-secret".into(), Value::String(k.clone()));
        }
        if let Some(p) = &self.parent {
            em.insert("parent".into(), Value::Object(p.write_options()));
        }
        em
    }
}

impl RbdSpec {
    pub(crate) fn parse(o: &Map<String, Value>) -> Result<RbdSpec> {
        check_keys(
            o,
            "rbd",
            &[
                "pool",
                "image",
                "snapshot",
                "conf",
                "user",
                "namespace",
                "key-secret",
                "encrypt",
            ],
        )?;
        let need = |k: &str| {
            opt_str(o, k)?
                .ok_or_else(|| Error::usage(format!("driver 'rbd' needs the option '{k}'")))
        };
        let encrypt = match o.get("encrypt") {
            None => None,
            Some(Value::Object(e)) => Some(parse_encrypt(e, "encrypt.")?),
            Some(_) => bail!(
                Usage,
                "rbd: 'encrypt' must be an object (encrypt.format=...)"
            ),
        };
        Ok(RbdSpec {
            pool: need("pool")?,
            image: need("image")?,
            snapshot: opt_str(o, "snapshot")?,
            conf: opt_str(o, "conf")?,
            user: opt_str(o, "user")?,
            namespace: opt_str(o, "namespace")?,
            key_secret: opt_str(o, "key-secret")?,
            encrypt,
            tuning: Tuning::from_options(o),
        })
    }

    /// `pool[/namespace]/image[@snap]`, as the rbd CLI names an image.
    pub fn image_name(&self) -> String {
        let ns = self
            .namespace
            .as_ref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        let snap = self
            .snapshot
            .as_ref()
            .map(|s| format!("@{s}"))
            .unwrap_or_default();
        format!("{}/{ns}{}{snap}", self.pool, self.image)
    }

    pub(crate) fn write_options(&self, m: &mut Map<String, Value>) {
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        };
        put("pool", &Some(self.pool.clone()));
        put("image", &Some(self.image.clone()));
        put("snapshot", &self.snapshot);
        put("conf", &self.conf);
        put("user", &self.user);
        put("namespace", &self.namespace);
        put("key-secret", &self.key_secret);
        if let Some(e) = &self.encrypt {
            m.insert("encrypt".into(), Value::Object(e.write_options()));
        }
        self.tuning.write_options(m);
    }
}

fn parse_encrypt(e: &Map<String, Value>, prefix: &str) -> Result<RbdEncrypt> {
    for k in e.keys() {
        ensure!(
            k == "format" || k == "key-secret" || k == "parent",
            Usage,
            "block driver 'rbd' does not support the option '{prefix}{k}'"
        );
    }
    let parent = match e.get("parent") {
        None => None,
        Some(Value::Object(p)) => Some(Box::new(parse_encrypt(p, &format!("{prefix}parent."))?)),
        Some(_) => bail!(
            Usage,
            "rbd: '{prefix}parent' must be an object ({prefix}parent.format=...)"
        ),
    };
    let format = opt_str(e, "format")?
        .ok_or_else(|| Error::usage(format!("rbd: encrypt options need {prefix}format")))?;
    Ok(RbdEncrypt {
        format: RbdEncryptFormat::parse(&format)?,
        key_secret: opt_str(e, "key-secret")?,
        parent,
    })
}

/// The options of QEMU's pseudo-filename `rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][:KEY=VALUE...]`
/// (`\` escapes a `:`, `@` or `/`; keys `conf` and `id`), as an rbd node's option tree.
pub fn rbd_filename_options(filename: &str) -> Result<Map<String, Value>> {
    let rest = filename
        .strip_prefix("rbd:")
        .ok_or_else(|| Error::usage(format!("'{filename}' is not an rbd: filename")))?;
    let fields = split_unescaped(rest, ':');
    let mut path = split_unescaped(&fields[0], '@');
    ensure!(
        path.len() <= 2,
        Usage,
        "rbd filename '{filename}': more than one '@'"
    );
    let snap = (path.len() == 2).then(|| path.pop().unwrap_or_default());
    let parts = split_unescaped(&path[0], '/');
    let (pool, ns, image) = match parts.as_slice() {
        [p, i] => (p.clone(), None, i.clone()),
        [p, n, i] => (p.clone(), Some(n.clone()), i.clone()),
        _ => bail!(
            Usage,
            "rbd filename '{filename}' must be rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][:conf=PATH][:id=USER]"
        ),
    };
    ensure!(
        !pool.is_empty() && !image.is_empty(),
        Usage,
        "rbd filename '{filename}': empty pool or image name"
    );
    let mut m = Map::new();
    m.insert("driver".into(), Value::String("rbd".into()));
    m.insert("pool".into(), Value::String(unescape(&pool)));
    if let Some(n) = ns {
        m.insert("namespace".into(), Value::String(unescape(&n)));
    }
    m.insert("image".into(), Value::String(unescape(&image)));
    if let Some(s) = snap {
        m.insert("snapshot".into(), Value::String(unescape(&s)));
    }
    for f in &fields[1..] {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("rbd filename option '{f}' lacks '='")))?;
        let key = match k {
            "conf" => "conf",
            "id" => "user",
            other => bail!(
                Usage,
                "rbd filename option '{other}' is not supported (conf=, id=); pass a cephx \
                 key with --image-opts key-secret=ID"
            ),
        };
        m.insert(key.into(), Value::String(unescape(v)));
    }
    Ok(m)
}

/// Split `s` at every `sep` not escaped by a backslash (escapes are kept).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let cur = out.last_mut().expect("never empty");
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            cur.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_filename_parts() {
        let m = rbd_filename_options("rbd:p/ns/im\\:g@s1:conf=/etc/c\\:x.conf:id=bob").unwrap();
        let s = RbdSpec::parse(&m).unwrap();
        assert_eq!(s.pool, "p");
        assert_eq!(s.namespace.as_deref(), Some("ns"));
        assert_eq!(s.image, "im:g");
        assert_eq!(s.snapshot.as_deref(), Some("s1"));
        assert_eq!(s.conf.as_deref(), Some("/etc/c:x.conf"));
        assert_eq!(s.user.as_deref(), Some("bob"));
        assert_eq!(s.image_name(), "p/ns/im:g@s1");
    }

    #[test]
    fn bad_filenames_are_refused_by_name() {
        for bad in [
            "rbd:onlypool",
            "rbd:p/i:mon_host=1.2.3.4",
            "rbd:p/i@a@b",
            "rbd:/i",
        ] {
            let e = rbd_filename_options(bad).unwrap_err();
            assert_eq!(e.kind(), vmcrypt_error::ErrorKind::Usage, "{bad}");
        }
    }

    #[test]
    fn encrypt_options_round_trip() {
        let m = crate::opts::parse_keyval(
            "driver=rbd,pool=p,image=i,encrypt.format=luks2,encrypt.key-secret=s0,\
             encrypt.parent.format=luks,encrypt.parent.key-secret=s1,\
             encrypt.parent.parent.format=luks-any",
            None,
        )
        .unwrap();
        let s = RbdSpec::parse(&m).unwrap();
        let e = s.encrypt.clone().unwrap();
        assert_eq!(e.format, RbdEncryptFormat::Luks2);
        assert_eq!(e.key_secret.as_deref(), Some("s0"));
        let p = e.parent.clone().unwrap();
        assert_eq!(
            (p.format, p.key_secret.as_deref()),
            (RbdEncryptFormat::Luks1, Some("s1"))
        );
        assert_eq!(p.parent.unwrap().format, RbdEncryptFormat::Any);
        let mut back = Map::new();
        back.insert("driver".into(), Value::String("rbd".into()));
        s.write_options(&mut back);
        assert_eq!(RbdSpec::parse(&back).unwrap(), s);
        let bad = crate::opts::parse_keyval("driver=rbd,pool=p,image=i,encrypt.format=aes", None);
        assert!(RbdSpec::parse(&bad.unwrap()).is_err());
        let bad = crate::opts::parse_keyval("driver=rbd,pool=p,image=i,encrypt.x=1", None);
        let e = RbdSpec::parse(&bad.unwrap()).unwrap_err();
        assert!(e.to_string().contains("encrypt.x"), "{e}");
        let bad = crate::opts::parse_keyval(
            "driver=rbd,pool=p,image=i,encrypt.format=luks,encrypt.parent.y=1",
            None,
        );
        let e = RbdSpec::parse(&bad.unwrap()).unwrap_err();
        assert!(e.to_string().contains("encrypt.parent.y"), "{e}");
    }
}
