//! LUKS2-only jobs: token import, export and remove, keyslot priority, label and
//! subsystem, and header repair (cryptsetup token, config, repair). A LUKS1 header is
//! refused with `Unsupported` before anything changes.
use super::Target;
use vmcrypt_error::{Error, Result, bail};
use vmcrypt_format::luks2::Priority;

/// `token import`: add the token in `json` (at `id`, or the lowest free id); returns its id.
pub fn token_import(t: &Target, id: Option<u32>, json: &str) -> Result<u32> {
    t.open_v2(false)?.token_import(id, json)
}

/// `token export`: the token's JSON, compact.
pub fn token_export(t: &Target, id: u32) -> Result<String> {
    t.open_v2(true)?.token_export(id)
}

/// `token remove`.
pub fn token_remove(t: &Target, id: u32) -> Result<()> {
    t.open_v2(false)?.token_remove(id)
}

/// `repair`: rewrite both header copies from the valid one; whether anything needed it.
pub fn repair(t: &Target) -> Result<bool> {
    t.open_v2(false)?.repair()
}

/// What `config` changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// ignore, normal or prefer, for `slot` (checked once the header is open).
    pub priority: Option<String>,
    pub slot: Option<u32>,
    pub label: Option<String>,
    pub subsystem: Option<String>,
}

/// `config`: set a keyslot's priority and/or the label and subsystem.
pub fn config(t: &Target, c: &Config) -> Result<()> {
    let mut vol = t.open_v2(false)?;
    if let Some(p) = c.priority.as_deref() {
        let slot = c
            .slot
            .ok_or_else(|| Error::usage("--priority needs --key-slot"))?;
        vol.set_priority(slot, priority(p)?)?;
    }
    if c.label.is_some() || c.subsystem.is_some() {
        vol.set_label(c.label.as_deref(), c.subsystem.as_deref())?;
    }
    Ok(())
}

fn priority(name: &str) -> Result<Priority> {
    Ok(match name {
        "ignore" => Priority::Ignore,
        "normal" => Priority::Normal,
        "prefer" => Priority::Prefer,
        other => bail!(
            Usage,
            "unknown priority '{other}' (ignore, normal or prefer)"
        ),
    })
}
