//! The `vmcrypt` command: parse arguments, run the command, map errors to exit codes.
/// `print!` that ends the process quietly when stdout is closed (e.g. `| head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if std::io::stdout().write_fmt(format_args!($($arg)*)).is_err() {
            std::process::exit(0);
        }
    }};
}

/// `println!` with [`out!`]'s behaviour on a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        out!($($arg)*);
        out!("\n");
    }};
}

mod cli;
mod cmd;
mod hardening;
mod passphrase;
mod stored;

use clap::Parser;
use std::process::ExitCode;
use vmcrypt_error::{Error, ErrorKind};

/// Exit status for an error, as documented in the README ("Exit codes"):
///
/// | code | kinds |
/// |---|---|
/// | 1 | usage error, or something named does not exist (`Usage`, `NotFound`) |
/// | 2 | wrong passphrase or no usable key slot (`WrongKey`) |
/// | 3 | I/O error (`Io`) |
/// | 4 | corrupt, unsupported or hostile image, request outside it (`Corrupt`, `Unsupported`, `LimitExceeded`, `OutOfRange`) |
/// | 5 | busy or read-only: slot in use, last slot, image locked (`Busy`, `ReadOnly`) |
/// | 6 | internal error, a bug in vmcrypt (`Internal`) |
///
/// Commands with statuses of their own return them as `Ok(code)`, not through here:
/// `check` 1 (could not check), 2 (corruptions), 3 (leaks), 63 (no checks for the
/// format); `compare` 1 (images differ).
fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::Usage | ErrorKind::NotFound => 1,
        ErrorKind::WrongKey => 2,
        ErrorKind::Io => 3,
        ErrorKind::Corrupt
        | ErrorKind::Unsupported
        | ErrorKind::LimitExceeded
        | ErrorKind::OutOfRange => 4,
        ErrorKind::ReadOnly | ErrorKind::Busy => 5,
        ErrorKind::Internal => 6,
    }
}

fn main() -> ExitCode {
    let _ = hardening::STATE.set(hardening::harden());
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cmd::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vmcrypt: {}", e.display_chain());
            ExitCode::from(exit_code(&e))
        }
    }
}
