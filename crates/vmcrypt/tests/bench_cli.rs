//! `vmcrypt bench -c CIPHER -s BITS`, as `cryptsetup benchmark -c ... -s ...`: only that
//! cipher, in cryptsetup's one-row layout (cryptsetup itself cannot run its cipher
//! benchmark here: no kernel crypto API in the container, so the layout is pinned from
//! its printf format in vmcrypt-crypto's bench_select tests); an unknown cipher is a
//! clear error with a non-zero exit and no table.
mod common;

use common::*;

/// The numbers of a cryptsetup row ("    aes-xts        512b      123.4 MiB/s ...").
fn speeds(row: &str) -> Vec<f64> {
    row.split("MiB/s")
        .filter_map(|p| p.split_whitespace().last()?.parse().ok())
        .collect()
}

#[test]
fn one_cipher_is_measured_and_printed_as_cryptsetup_prints_it() {
    for (args, row_start) in [
        (
            &["-c", "aes-xts", "-s", "512"][..],
            "    aes-xts        512b  ",
        ),
        (&["-c", "aes-xts-plain64"][..], "    aes-xts        256b  "),
        (
            &["-c", "serpent-cbc", "-s", "256"][..],
            "serpent-cbc        256b  ",
        ),
        (
            &["--cipher", "twofish", "--key-size", "128"][..],
            "twofish-cbc        128b  ",
        ),
    ] {
        let mut a = vec!["bench", "--seconds", "0.03"];
        a.extend_from_slice(args);
        let out = vmcrypt(&a).ok().stdout_str();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.len(),
            4,
            "{args:?}: the cipher's table and the CPU:\n{out}"
        );
        assert!(lines[3].starts_with("# CPU: "), "{out}");
        assert!(lines[0].starts_with("# Tests are approximate"), "{out}");
        assert!(!out.contains("PBKDF2"), "{out}");
        // cryptsetup pads the header by the name's width beyond 11 columns.
        let name = row_start.split_whitespace().next().unwrap();
        let pad = " ".repeat(name.len().max(11) - 11);
        assert_eq!(
            lines[1],
            format!("#{pad} Algorithm |       Key |      Encryption |      Decryption"),
            "{args:?}"
        );
        assert!(lines[2].starts_with(row_start), "{args:?}: {:?}", lines[2]);
        let s = speeds(lines[2]);
        assert_eq!(s.len(), 2, "{:?}", lines[2]);
        assert!(s.iter().all(|&v| v > 0.0), "{:?}", lines[2]);
    }
}

#[test]
fn an_unknown_cipher_or_key_size_is_refused() {
    for (args, msg) in [
        (
            &["-c", "foo-xts", "-s", "512"][..],
            "cipher foo-xts (with 512 bits key) is not available",
        ),
        (&["-c", "aes-xts", "-s", "100"][..], "multiple of 8 bits"),
        (
            &["-c", "aes-xts", "-s", "128"][..],
            "cipher aes-xts (with 128 bits key) is not available",
        ),
    ] {
        let mut a = vec!["bench", "--seconds", "0.03"];
        a.extend_from_slice(args);
        let out = vmcrypt(&a).code_is(1).stderr_has(msg);
        assert!(out.stdout.is_empty(), "{args:?}: printed a table");
    }
    // -s sizes a cipher: without -c it is a usage error, as the table has fixed sizes.
    vmcrypt(&["bench", "-s", "512"])
        .code_is(1)
        .stderr_has("--cipher");
}
