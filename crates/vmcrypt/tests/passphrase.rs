//! How passphrases reach vmcrypt: never as arguments; from a key file (exact bytes, `-` =
//! all of stdin), from one line of stdin when it is not a terminal, or from a no-echo
//! prompt on a terminal (driven here through `script`, which gives us a pty).
mod common;
use common::*;
use std::process::{Command, Stdio};

fn image(sc: &Scratch) -> String {
    sc.write("pw", b"tty-pass");
    let opts = "key-secret=s0,iterations=1000";
    create_luks(vmcrypt, sc, "pw", opts, "d.luks", Some("1M")).ok();
    sc.p("d.luks")
}

#[test]
fn stdin_line_and_key_file_semantics() {
    let sc = Scratch::new();
    let img = image(&sc);
    // Not a terminal: one line of stdin, newline not included.
    vmcrypt_stdin(&["luks", "test-key", &img], b"tty-pass\nrest is ignored").ok();
    vmcrypt_stdin(&["luks", "test-key", &img], b"wrong\n").code_is(2);
    // --key-file -: every byte of stdin, so a trailing newline is part of the key.
    vmcrypt_stdin(&["luks", "test-key", "--key-file", "-", &img], b"tty-pass").ok();
    vmcrypt_stdin(
        &["luks", "test-key", "--key-file", "-", &img],
        b"tty-pass\n",
    )
    .code_is(2);
}

/// Run `vmcrypt ARGS` on a pty, typing `input` after a pause (so the prompt has turned
/// echo off first). Returns (exit status, everything the terminal showed).
fn on_tty(args: &[&str], input: &str) -> (i32, String) {
    let script = require_tool("script");
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_vmcrypt").to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(sleep 1; printf '{input}') | {} -qec \"{cmd}\" /dev/null",
            script.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running script");
    let _ = child.stdin.take();
    let out = child.wait_with_output().expect("waiting for script");
    let shown =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), shown)
}

#[test]
fn terminal_prompt_does_not_echo() {
    let sc = Scratch::new();
    let img = image(&sc);
    let (code, shown) = on_tty(&["luks", "test-key", &img], "tty-pass\\n");
    assert_eq!(code, 0, "terminal showed: {shown}");
    assert!(shown.contains("Enter passphrase for"), "no prompt: {shown}");
    assert!(
        !shown.contains("tty-pass"),
        "the passphrase was echoed: {shown}"
    );
    let (code, shown) = on_tty(&["luks", "test-key", &img], "nope\\n");
    assert_eq!(code, 2, "terminal showed: {shown}");
}

#[test]
fn terminal_new_passphrase_is_asked_twice() {
    let sc = Scratch::new();
    let img = image(&sc);
    let kf = sc.p("pw");
    let (code, shown) = on_tty(
        &[
            "luks",
            "add-key",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            &kf,
            &img,
        ],
        "second-pass\\nsecond-pass\\n",
    );
    assert_eq!(code, 0, "terminal showed: {shown}");
    assert!(shown.contains("Verify passphrase"), "{shown}");
    assert!(
        !shown.contains("second-pass"),
        "the new passphrase was echoed: {shown}"
    );
    sc.write("pw2", b"second-pass");
    vmcrypt(&["luks", "test-key", "--key-file", &sc.p("pw2"), &img]).ok();
    // A mismatch adds nothing.
    let before = sha256_file(sc.path("d.luks").as_path());
    let (code, _) = on_tty(
        &[
            "luks",
            "add-key",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            &kf,
            &img,
        ],
        "third\\nthirt\\n",
    );
    assert_eq!(code, 1);
    assert_eq!(sha256_file(sc.path("d.luks").as_path()), before);
}

/// `luks format` on a terminal: cryptsetup's question (only YES goes on), then the new
/// passphrase twice; cryptsetup accepts the result.
#[test]
fn format_asks_yes_then_the_passphrase_twice_on_a_terminal() {
    let sc = Scratch::new();
    let dev = sc.sparse("f.img", 4 << 20);
    let args = [
        "luks",
        "format",
        "--type",
        "luks1",
        "--pbkdf-force-iterations",
        "1000",
        &dev,
    ];
    let (code, shown) = on_tty(&args, "yes\\n");
    assert_ne!(code, 0, "{shown}");
    assert!(shown.contains("Type 'yes' in capital letters"), "{shown}");
    assert!(shown.contains("Operation aborted"), "{shown}");
    let (code, shown) = on_tty(&args, "YES\\ntty-pass\\ntty-pass\\n");
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("Verify passphrase"), "{shown}");
    sc.write("pw", b"tty-pass");
    cs_test_pass(&sc, "pw", &dev, &[]).ok();
}
