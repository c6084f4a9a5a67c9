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

use clap::Parser;
use std::process::ExitCode;
use vmcrypt_error::{Error, ErrorKind};

/// Exit status for an error, as documented in the README: 1 usage, 2 wrong key or no
/// usable key slot, 3 I/O, 4 corrupt/unsupported/limit (bad image), 5 busy/exists.
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
