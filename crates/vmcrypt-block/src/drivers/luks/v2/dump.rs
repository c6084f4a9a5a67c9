//! Descriptions of a LUKS2 header: cryptsetup's `luksDump` text, the JSON metadata
//! (`--dump-json-metadata`), and the `format-specific` block of `vmcrypt info`.
use super::Luks2Volume;
use serde_json::{Value, json};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::Result;
use vmcrypt_format::luks2::{Kdf, KeyslotKind, Priority, SegmentSize, base64};

fn hex_block(bytes: &[u8], indent: &str) -> String {
    bytes
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x} ")).collect::<String>())
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

fn or_none(s: &str, what: &str) -> String {
    if s.is_empty() {
        format!("(no {what})")
    } else {
        s.to_string()
    }
}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Ignore => "ignored",
        Priority::Normal => "normal",
        Priority::Prefer => "preferred",
    }
}

/// cryptsetup's `luksDump` text for a LUKS2 header.
pub fn luks2_dump_text(vol: &Luks2Volume, volume_key: Option<&SecretBytes>) -> Result<String> {
    let h = vol.header();
    let md = &h.metadata;
    let cfg = md.config()?;
    let mut s = String::from("LUKS header information\n");
    s += &format!("Version:       \t{}\n", h.binary.version);
    s += &format!("Epoch:         \t{}\n", h.binary.seqid);
    s += &format!("Metadata area: \t{} [bytes]\n", h.hdr_size());
    s += &format!("Keyslots area: \t{} [bytes]\n", cfg.keyslots_size);
    s += &format!("UUID:          \t{}\n", h.binary.uuid);
    s += &format!("Label:         \t{}\n", or_none(&h.binary.label, "label"));
    s += &format!(
        "Subsystem:     \t{}\n",
        or_none(&h.binary.subsystem, "subsystem")
    );
    let flags = if cfg.flags.is_empty() {
        "(no flags)".to_string()
    } else {
        cfg.flags.join(" ") + " "
    };
    s += &format!("Flags:       \t{flags}\n");
    if !cfg.mandatory_requirements.is_empty() {
        s += &format!("Requirements:\t{} \n", cfg.mandatory_requirements.join(" "));
    }
    s += "\nData segments:\n";
    for seg in md.segments()? {
        s += &format!("  {}: {}\n", seg.id, seg.kind);
        s += &format!("\toffset: {} [bytes]\n", seg.offset);
        match seg.size {
            SegmentSize::Dynamic => s += "\tlength: (whole device)\n",
            SegmentSize::Bytes(n) => s += &format!("\tlength: {n} [bytes]\n"),
        }
        if seg.kind == "crypt" {
            s += &format!("\tcipher: {}\n", seg.encryption);
            s += &format!("\tsector: {} [bytes]\n", seg.sector_size);
        }
        if !seg.flags.is_empty() {
            s += &format!("\tflags : {}\n", seg.flags.join(" "));
        }
    }
    if let Some(k) = volume_key {
        s += &format!("\nVolume key:\t{}\n", hex_block(k.as_bytes(), "\t\t"));
    }
    s += "\nKeyslots:\n";
    for ks in md.keyslots()? {
        match ks.kind {
            KeyslotKind::Luks2(l) => {
                s += &format!("  {}: luks2\n", ks.id);
                s += &format!("\tKey:        {} bits\n", l.key_size * 8);
                s += &format!("\tPriority:   {}\n", priority_name(l.priority));
                s += &format!("\tCipher:     {}\n", l.area_encryption);
                s += &format!("\tCipher key: {} bits\n", l.area_key_size * 8);
                match &l.kdf {
                    Kdf::Pbkdf2 {
                        hash,
                        iterations,
                        salt,
                    } => {
                        s += &format!(
                            "\tPBKDF:      pbkdf2\n\tHash:       {hash}\n\tIterations: {iterations}\n"
                        );
                        s += &format!("\tSalt:       {}\n", hex_block(salt, "\t            "));
                    }
                    Kdf::Argon2 {
                        id,
                        time,
                        memory,
                        cpus,
                        salt,
                    } => {
                        s += &format!(
                            "\tPBKDF:      {}\n",
                            if *id { "argon2id" } else { "argon2i" }
                        );
                        s += &format!(
                            "\tTime cost:  {time}\n\tMemory:     {memory}\n\tThreads:    {cpus}\n"
                        );
                        s += &format!("\tSalt:       {}\n", hex_block(salt, "\t            "));
                    }
                    Kdf::Unsupported { kind, json } => s += &unsupported_kdf_text(kind, json),
                }
                s += &format!(
                    "\tAF stripes: {}\n\tAF hash:    {}\n",
                    l.af_stripes, l.af_hash
                );
                s += &format!(
                    "\tArea offset:{} [bytes]\n\tArea length:{} [bytes]\n",
                    l.area_offset, l.area_size
                );
                if let Some(d) = md.digest_for_keyslot(ks.id)? {
                    s += &format!("\tDigest ID:  {}\n", d.id);
                }
            }
            KeyslotKind::Reencrypt { mode, direction } => {
                s += &format!(
                    "  {}: reencrypt (unbound)\n\tMode:       {mode}\n\tDirection:  {direction}\n",
                    ks.id
                );
            }
            KeyslotKind::Unknown(kind) => s += &format!("  {}: {kind}\n", ks.id),
        }
    }
    s += "Tokens:\n";
    for t in md.tokens()? {
        s += &format!("  {}: {}\n", t.id, t.kind);
        for k in &t.keyslots {
            s += &format!("\tKeyslot:    {k}\n");
        }
    }
    s += "Digests:\n";
    for d in md.digests()? {
        s += &format!(
            "  {}: {}\n\tHash:       {}\n\tIterations: {}\n",
            d.id, d.kind, d.hash, d.iterations
        );
        s += &format!("\tSalt:       {}\n", hex_block(&d.salt, "\t            "));
        s += &format!("\tDigest:     {}\n", hex_block(&d.digest, "\t            "));
    }
    Ok(s)
}

/// The KDF lines of a keyslot whose KDF vmcrypt cannot run, as cryptsetup prints any KDF
/// that is not PBKDF2 (type, time, memory, threads, salt: those present).
fn unsupported_kdf_text(kind: &str, kdf: &serde_json::Map<String, Value>) -> String {
    let mut s = format!("\tPBKDF:      {kind} (not supported by vmcrypt)\n");
    for (field, label) in [
        ("time", "Time cost"),
        ("memory", "Memory"),
        ("cpus", "Threads"),
    ] {
        if let Some(v) = kdf.get(field).and_then(Value::as_u64) {
            s += &format!("\t{:<12}{v}\n", format!("{label}:"));
        }
    }
    let salt = kdf.get("salt").and_then(Value::as_str);
    if let Some(salt) = salt.and_then(|b| base64::decode(b, "salt").ok()) {
        s += &format!("\tSalt:       {}\n", hex_block(&salt, "\t            "));
    }
    s
}

/// The JSON metadata as stored (cryptsetup's `luksDump --dump-json-metadata`).
pub fn luks2_dump_json(vol: &Luks2Volume) -> Value {
    vol.header().metadata.to_value()
}

/// The `format-specific.data` of `vmcrypt info` for a LUKS2 image (QEMU has none).
pub fn luks2_info_json(vol: &Luks2Volume) -> Value {
    let h = vol.header();
    let md = &h.metadata;
    let seg = md.default_segment().ok();
    let keyslots: Vec<Value> = md
        .keyslots()
        .unwrap_or_default()
        .into_iter()
        .map(|k| match k.kind {
            KeyslotKind::Luks2(l) => {
                let kdf = match l.kdf {
                    Kdf::Pbkdf2 { hash, iterations, .. } => json!({"type": "pbkdf2", "hash": hash, "iterations": iterations}),
                    Kdf::Argon2 { id, time, memory, cpus, .. } => json!({
                        "type": if id { "argon2id" } else { "argon2i" }, "time": time, "memory": memory, "cpus": cpus}),
                    Kdf::Unsupported { kind, .. } => json!({"type": kind, "supported": false}),
                };
                json!({"id": k.id, "type": "luks2", "priority": priority_name(l.priority), "kdf": kdf,
                       "key-offset": l.area_offset, "key-size": l.area_size})
            }
            KeyslotKind::Reencrypt { .. } => json!({"id": k.id, "type": "reencrypt"}),
            KeyslotKind::Unknown(kind) => json!({"id": k.id, "type": kind}),
        })
        .collect();
    let reqs = md
        .config()
        .map(|c| c.mandatory_requirements)
        .unwrap_or_default();
    json!({
        "version": 2,
        "uuid": h.binary.uuid,
        "label": h.binary.label,
        "subsystem": h.binary.subsystem,
        "cipher": seg.as_ref().map(|s| s.encryption.clone()),
        "sector-size": seg.as_ref().map(|s| s.sector_size),
        "payload-offset": seg.as_ref().map(|s| s.offset),
        "detached-header": vol.is_detached(),
        "keyslots": keyslots,
        "tokens": md.tokens().unwrap_or_default().iter().map(|t| json!({"id": t.id, "type": t.kind})).collect::<Vec<_>>(),
        "requirements": reqs,
    })
}
