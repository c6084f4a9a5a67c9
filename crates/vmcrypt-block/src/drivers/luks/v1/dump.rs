//! Human and machine descriptions of a LUKS1 header: cryptsetup's `luksDump` text, a JSON
//! dump, and the `format-specific` block `qemu-img info` prints for LUKS.
use super::Luks1Volume;
use serde_json::{Value, json};
use vmcrypt_crypto::SecretBytes;
use vmcrypt_format::luks1::NUM_KEYSLOTS;

fn hex_lines(bytes: &[u8], per_line: usize, indent: &str) -> String {
    let lines: Vec<String> = bytes
        .chunks(per_line)
        .map(|c| c.iter().map(|b| format!("{b:02x} ")).collect::<String>())
        .collect();
    lines.join(&format!("\n{indent}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// cryptsetup's `luksDump` text for `vol`, as printed for device `name`. With
/// `volume_key`, its bytes are printed too (only when the user asked for them).
pub fn luks_dump_text(vol: &Luks1Volume, name: &str, volume_key: Option<&SecretBytes>) -> String {
    let h = vol.header();
    let mut s = format!("LUKS header information for {name}\n\n");
    s += &format!("Version:       \t{}\n", h.version);
    s += &format!("Cipher name:   \t{}\n", h.cipher_name);
    s += &format!("Cipher mode:   \t{}\n", h.cipher_mode);
    s += &format!("Hash spec:     \t{}\n", h.hash_spec);
    s += &format!("Payload offset:\t{}\n", h.payload_offset);
    s += &format!("MK bits:       \t{}\n", h.key_bytes * 8);
    if let Some(k) = volume_key {
        s += &format!("MK dump:\t{}\n", hex_lines(k.as_bytes(), 16, "       \t"));
    }
    s += &format!("MK digest:     \t{}\n", hex_lines(&h.mk_digest, 20, ""));
    s += &format!(
        "MK salt:       \t{}\n",
        hex_lines(&h.mk_digest_salt, 16, "               \t")
    );
    s += &format!("MK iterations: \t{}\n", h.mk_digest_iter);
    s += &format!("UUID:          \t{}\n\n", h.uuid);
    for (i, ks) in h.keyslots.iter().enumerate() {
        if !ks.is_enabled() {
            s += &format!("Key Slot {i}: DISABLED\n");
            continue;
        }
        s += &format!("Key Slot {i}: ENABLED\n");
        s += &format!("\tIterations:         \t{}\n", ks.iterations);
        s += &format!(
            "\tSalt:               \t{}\n",
            hex_lines(&ks.salt, 16, "\t                      \t")
        );
        s += &format!("\tKey material offset:\t{}\n", ks.key_material_offset);
        s += &format!("\tAF stripes:            \t{}\n", ks.stripes);
    }
    s
}

/// A JSON description of the header (every field, slots as an array).
pub fn luks_dump_json(vol: &Luks1Volume, volume_key: Option<&SecretBytes>) -> Value {
    let h = vol.header();
    let slots: Vec<Value> = h
        .keyslots
        .iter()
        .enumerate()
        .map(|(i, ks)| {
            json!({
                "slot": i,
                "active": ks.is_enabled(),
                "iterations": ks.iterations,
                "salt": hex(&ks.salt),
                "key-material-offset": ks.key_material_offset,
                "key-material-bytes": h.material_len(i),
                "stripes": ks.stripes,
            })
        })
        .collect();
    let mut v = json!({
        "version": h.version,
        "uuid": h.uuid,
        "cipher-name": h.cipher_name,
        "cipher-mode": h.cipher_mode,
        "hash-spec": h.hash_spec,
        "payload-offset": h.payload_offset,
        "key-bytes": h.key_bytes,
        "mk-digest": hex(&h.mk_digest),
        "mk-digest-salt": hex(&h.mk_digest_salt),
        "mk-digest-iterations": h.mk_digest_iter,
        "detached-header": vol.is_detached(),
        "keyslots": slots,
    });
    if let Some(k) = volume_key {
        v["volume-key"] = Value::String(hex(k.as_bytes()));
    }
    v
}

/// The `format-specific.data` object `qemu-img info --output=json` prints for LUKS.
pub fn qemu_info_json(vol: &Luks1Volume) -> Value {
    let h = vol.header();
    let spec = vol.spec();
    let mut data = serde_json::Map::new();
    if let Some(iv) = spec.qemu_ivgen_alg() {
        data.insert("ivgen-alg".into(), json!(iv));
    }
    data.insert("detached-header".into(), json!(vol.is_detached()));
    data.insert("hash-alg".into(), json!(vol.hash().name()));
    data.insert("cipher-alg".into(), json!(spec.qemu_cipher_alg()));
    data.insert("uuid".into(), json!(h.uuid));
    if let vmcrypt_crypto::IvGen::Essiv(hash) = spec.ivgen {
        data.insert("ivgen-hash-alg".into(), json!(hash.name()));
    }
    data.insert("cipher-mode".into(), json!(spec.qemu_cipher_mode()));
    let slots: Vec<Value> = (0..NUM_KEYSLOTS)
        .map(|i| {
            let ks = &h.keyslots[i];
            if ks.is_enabled() {
                json!({"active": true, "iters": ks.iterations,
                       "key-offset": ks.material_offset_bytes(), "stripes": ks.stripes})
            } else {
                json!({"active": false, "key-offset": ks.material_offset_bytes()})
            }
        })
        .collect();
    data.insert("slots".into(), Value::Array(slots));
    data.insert("payload-offset".into(), json!(h.payload_offset_bytes()));
    data.insert("master-key-iters".into(), json!(h.mk_digest_iter));
    Value::Object(data)
}
