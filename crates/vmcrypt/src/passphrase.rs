//! Getting passphrases without ever taking them as arguments: key files (exact bytes,
//! `-` = all of stdin, as cryptsetup's --key-file), a no-echo prompt on a terminal, or
//! one line of stdin when it is not a terminal.
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use vmcrypt_crypto::SecretBytes;
use vmcrypt_error::{Error, Result, bail};
use zeroize::Zeroizing;

/// Exact bytes of `path` (`-`: all of stdin).
pub fn read_key_file(path: &str) -> Result<SecretBytes> {
    let mut buf = Zeroizing::new(Vec::new());
    if path == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(e, "reading the key from stdin"))?;
    } else {
        let mut f = std::fs::File::open(path)
            .map_err(|e| Error::io(e, format!("cannot open key file '{path}'")))?;
        f.read_to_end(&mut buf)
            .map_err(|e| Error::io(e, format!("reading key file '{path}'")))?;
    }
    Ok(SecretBytes::new(buf.to_vec()))
}

/// Read one passphrase: from a terminal without echo after `prompt`, else one line of
/// stdin (without its newline).
pub fn prompt(prompt: &str) -> Result<SecretBytes> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let fd = stdin.as_fd();
        let saved = rustix::termios::tcgetattr(fd)
            .map_err(|e| Error::io(e.into(), "reading terminal mode"))?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &quiet)
            .map_err(|e| Error::io(e.into(), "turning off terminal echo"))?;
        let line = read_line();
        let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &saved);
        eprintln!();
        line
    } else {
        read_line()
    }
}

fn read_line() -> Result<SecretBytes> {
    let mut out = Zeroizing::new(Vec::new());
    let mut byte = [0u8; 1];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => out.push(byte[0]),
            Err(e) => return Err(Error::io(e, "reading the passphrase")),
        }
    }
    Ok(SecretBytes::new(out.to_vec()))
}

/// A new passphrase: asked twice on a terminal, once otherwise.
pub fn prompt_new(what: &str) -> Result<SecretBytes> {
    let first = prompt(&format!("Enter new passphrase for {what}: "))?;
    if std::io::stdin().is_terminal() {
        let again = prompt("Verify passphrase: ")?;
        if again != first {
            bail!(Usage, "passphrases do not match");
        }
    }
    if first.is_empty() {
        bail!(Usage, "empty passphrase refused");
    }
    Ok(first)
}

/// The existing passphrase: key file if given, else a prompt naming `device`.
pub fn existing(key_file: Option<&str>, device: &str) -> Result<SecretBytes> {
    match key_file {
        Some(p) => read_key_file(p),
        None => prompt(&format!("Enter passphrase for {device}: ")),
    }
}
