//! What every image command shares, and nothing command-specific: the options every
//! image command takes ([`Common`], [`LimitOpts`]), turning them into the library's
//! [`ImageArg`] and [`Env`], the terminal side of a job's [`Events`] (warnings and
//! qemu-img's `-p` progress line on stderr), `--output` parsing and JSON printing.
//! A leaf: it imports no command module.
use clap::Args;
use serde_json::Value;
use std::io::Write;
use vmcrypt_block::jobs::create::options_for;
use vmcrypt_block::jobs::{Env, Events, ImageArg};
use vmcrypt_error::{Error, Result, bail};

/// Options every image command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    /// Define a secret: secret,id=ID,file=PATH (or data=STRING, unsafe: visible in ps)
    #[arg(long = "object", value_name = "OBJECTDEF")]
    pub objects: Vec<String>,
    /// Treat the filename as a set of image options (driver=luks,file.filename=...)
    #[arg(long = "image-opts")]
    pub image_opts: bool,
    /// Quiet: no progress or warnings
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Open the image without locking it (qemu-img's -U), e.g. to inspect a disk a
    /// running VM uses; what another writer changes meanwhile may read inconsistently
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    #[command(flatten)]
    pub limits: LimitOpts,
}

/// Raise the caps that protect an unlock from a hostile header's KDF cost (see README).
#[derive(Args, Debug, Clone, Default)]
pub struct LimitOpts {
    /// Largest Argon2 memory cost accepted from a header, KiB (default 4194304 = 4 GiB)
    #[arg(long = "max-kdf-memory", value_name = "KIB", global = true)]
    pub max_kdf_memory: Option<u32>,
    /// Largest Argon2 time cost accepted from a header (default 1000)
    #[arg(long = "max-kdf-time", value_name = "N", global = true)]
    pub max_kdf_time: Option<u32>,
    /// Largest PBKDF2 iteration count accepted from a header (default 100000000)
    #[arg(long = "max-pbkdf2-iterations", value_name = "N", global = true)]
    pub max_pbkdf2_iterations: Option<u32>,
    /// Largest total KDF cost of one unlock over all key slots it tries, in multiples of
    /// a slot at the caps above (default 4); costlier slots are skipped unless named
    #[arg(long = "max-unlock-cost", value_name = "N", global = true)]
    pub max_unlock_cost: Option<u32>,
}

impl LimitOpts {
    /// The limits with the user's overrides applied.
    pub fn limits(&self) -> vmcrypt_crypto::argon::KdfLimits {
        let mut l = vmcrypt_crypto::argon::KdfLimits::default();
        if let Some(m) = self.max_kdf_memory {
            l.max_memory_kib = m;
        }
        if let Some(t) = self.max_kdf_time {
            l.max_time = t;
        }
        if let Some(i) = self.max_pbkdf2_iterations {
            l.max_pbkdf2_iterations = i;
        }
        if let Some(n) = self.max_unlock_cost {
            l.max_unlock_cost = n;
        }
        l
    }
}

/// The options of a command that opens images of one format: [`Common`] and `-f`.
#[derive(Args, Debug, Clone, Default)]
pub struct ImageOpts {
    #[command(flatten)]
    pub common: Common,
    #[arg(short = 'f')]
    pub format: Option<String>,
}

impl ImageOpts {
    /// The command's [`Env`] and its image argument `name`.
    pub fn open_parts(&self, name: &str) -> (Env, ImageArg) {
        (
            self.common.env(),
            self.common.image(self.format.as_deref(), name),
        )
    }

    /// Terminal events for this command (see [`Ui::with_progress`]).
    pub fn ui(&self, progress: bool) -> Ui {
        Ui::with_progress(&self.common, progress)
    }
}

/// [`ImageOpts`] and `--output` for a command that prints a report.
#[derive(Args, Debug, Clone, Default)]
pub struct ReportOpts {
    #[command(flatten)]
    pub image: ImageOpts,
    #[arg(long = "output", default_value = "human")]
    pub output: String,
}

impl ReportOpts {
    /// The parsed `--output`.
    pub fn output(&self) -> Result<Output> {
        Output::parse(&self.output)
    }
}

impl Common {
    /// The secrets and KDF limits the command's images are opened with (the
    /// `--object` definitions are parsed when a job first needs them).
    pub fn env(&self) -> Env {
        Env::new(self.objects.clone(), self.limits.limits())
            .with_stored(std::sync::Arc::new(crate::stored::CliStoredSecrets))
    }

    /// The image argument `name` with the format `-f` gave.
    pub fn image(&self, format: Option<&str>, name: &str) -> ImageArg {
        ImageArg {
            name: name.into(),
            format: format.map(Into::into),
            image_opts: self.image_opts,
            force_share: self.force_share,
        }
    }
}

/// A job's events on the terminal: warnings on stderr unless `-q`, and with `-p`
/// qemu-img's progress line on stderr, "    (12.34/100%)", redrawn when it changes.
pub struct Ui {
    quiet: bool,
    show_progress: bool,
    last: Option<u64>,
}

impl Ui {
    /// Warnings unless quiet; no progress line.
    pub fn new(common: &Common) -> Ui {
        Ui::with_progress(common, false)
    }

    /// Warnings unless quiet; the progress line when `progress` and not quiet.
    pub fn with_progress(common: &Common, progress: bool) -> Ui {
        Ui {
            quiet: common.quiet,
            show_progress: progress && !common.quiet,
            last: None,
        }
    }

    /// Run `job` with these events; the progress line ends when it succeeds.
    pub fn run<T>(mut self, job: impl FnOnce(&mut Ui) -> Result<T>) -> Result<T> {
        let r = job(&mut self)?;
        if self.show_progress {
            eprintln!();
        }
        Ok(r)
    }
}

impl Events for Ui {
    fn warning(&mut self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    fn progress(&mut self, done: u64, total: u64) {
        let hundredths = (u128::from(done) * 10_000)
            .checked_div(u128::from(total))
            .map_or(10_000, |h| h as u64);
        if self.show_progress && self.last != Some(hundredths) {
            self.last = Some(hundredths);
            eprint!("    ({}.{:02}/100%)\r", hundredths / 100, hundredths % 100);
            let _ = std::io::stderr().flush();
        }
    }
}

/// `--output`: qemu-img's two report shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
}

impl Output {
    /// Parse `--output`'s value.
    pub fn parse(s: &str) -> Result<Output> {
        match s {
            "human" => Ok(Output::Human),
            "json" => Ok(Output::Json),
            _ => bail!(Usage, "--output must be human or json, not '{s}'"),
        }
    }
}

/// JSON with qemu-img's 4-space indentation.
pub fn pretty(v: &Value) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("JSON serialisation");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// `-o help`: the options of `format`.
pub fn print_option_help(format: &str) -> Result<u8> {
    outln!("Supported options:");
    for (name, help) in options_for(format)? {
        outln!("  {name:<18} - {help}");
    }
    Ok(0)
}

/// Report `e` as the process would and return qemu-img's exit status `code` for it
/// (for commands whose failures have their own status, like map's 1 or compare's 2).
pub fn failed(e: &Error, code: u8) -> u8 {
    eprintln!("vmcrypt: {}", e.display_chain());
    code
}
