//! Command-line syntax: flags parsed to plain data (validated later, in the commands).
//! Image commands follow qemu-img; `vmcrypt luks ...` follows cryptsetup.
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "vmcrypt",
    version,
    about = "Encrypted VM disks: LUKS images with a qemu-img-compatible command line"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

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
        l
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an image (qemu-img create)
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(short = 'f', default_value = "raw")]
        format: String,
        /// Format options (key=value,...); -o help lists them
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Backing file (qcow2; same as -o backing_file=)
        #[arg(short = 'b', value_name = "BACKING_FILE")]
        backing: Option<String>,
        /// Format of the backing file (same as -o backing_fmt=)
        #[arg(short = 'F', value_name = "BACKING_FMT")]
        backing_format: Option<String>,
        /// Do not open the backing file (the size must be given)
        #[arg(short = 'u')]
        unsafe_backing: bool,
        /// Image to create (not needed with -o help)
        filename: Option<String>,
        size: Option<String>,
    },
    /// Change the backing file of a qcow2 image (qemu-img rebase): copies what differs
    /// between the old and new backing files into the image first, unless -u
    Rebase {
        #[command(flatten)]
        common: Common,
        #[arg(short = 'f')]
        format: Option<String>,
        /// New backing file ("" removes the backing file)
        #[arg(short = 'b', value_name = "BACKING_FILE")]
        backing: String,
        /// Format of the new backing file
        #[arg(short = 'F', value_name = "BACKING_FMT")]
        backing_format: Option<String>,
        /// Unsafe mode: change only the backing file name, copy no data
        #[arg(short = 'u')]
        unsafe_mode: bool,
        /// Show progress (safe mode)
        #[arg(short = 'p')]
        progress: bool,
        filename: String,
    },
    /// Show image information (qemu-img info)
    Info {
        #[command(flatten)]
        common: Common,
        #[arg(short = 'f')]
        format: Option<String>,
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// Also show every backing file of the chain
        #[arg(long = "backing-chain")]
        backing_chain: bool,
        filename: String,
    },
    /// Convert or copy an image (qemu-img convert)
    Convert {
        #[command(flatten)]
        common: Common,
        #[arg(short = 'f')]
        format: Option<String>,
        #[arg(short = 'O', default_value = "raw")]
        out_format: String,
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Target exists: do not create it
        #[arg(short = 'n')]
        no_create: bool,
        /// Treat the target name as image options (needs -n)
        #[arg(long = "target-image-opts")]
        target_image_opts: bool,
        /// Show a progress bar
        #[arg(short = 'p')]
        progress: bool,
        /// Cache mode of the target (accepted for compatibility)
        #[arg(short = 't')]
        cache: Option<String>,
        /// Cache mode of the source (accepted for compatibility)
        #[arg(short = 'T')]
        src_cache: Option<String>,
        /// Source image (not needed with -o help)
        source: Option<String>,
        /// Target image
        target: Option<String>,
    },
    /// Check an image for consistency (qemu-img check)
    Check {
        #[command(flatten)]
        common: Common,
        #[arg(short = 'f')]
        format: Option<String>,
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// Repair qcow2 refcounts: leaks (lower leaked refcounts) or all (also raise
        /// too-low ones)
        #[arg(short = 'r', value_name = "leaks|all")]
        repair: Option<String>,
        filename: String,
    },
    /// Change the virtual size of an image (qemu-img resize)
    Resize {
        #[command(flatten)]
        common: Common,
        #[arg(short = 'f')]
        format: Option<String>,
        /// Allow shrinking (data past the new end is lost)
        #[arg(long)]
        shrink: bool,
        filename: String,
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Copy an image's data into its backing file (qemu-img commit)
    Commit {
        #[command(flatten)]
        common: Common,
        #[arg(short = 'f')]
        format: Option<String>,
        /// Do not empty the image after the commit
        #[arg(short = 'd')]
        keep: bool,
        /// Show progress
        #[arg(short = 'p')]
        progress: bool,
        filename: String,
    },
    /// Show how an image's data is allocated and where it lies (qemu-img map)
    Map {
        #[command(flatten)]
        common: Common,
        #[arg(short = 'f')]
        format: Option<String>,
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// First guest byte to map
        #[arg(long = "start-offset", value_name = "OFFSET", default_value = "0")]
        start_offset: String,
        /// Map at most this many bytes
        #[arg(long = "max-length", value_name = "LENGTH")]
        max_length: Option<String>,
        filename: String,
    },
    /// Check whether two images have the same contents (qemu-img compare)
    Compare {
        #[command(flatten)]
        common: Common,
        /// Format of the first image
        #[arg(short = 'f')]
        format1: Option<String>,
        /// Format of the second image
        #[arg(short = 'F')]
        format2: Option<String>,
        /// Strict mode: fail on different sizes or allocation
        #[arg(short = 's')]
        strict: bool,
        image1: String,
        image2: String,
    },
    /// LUKS header and key-slot management (cryptsetup's luks* commands)
    Luks {
        #[command(subcommand)]
        command: LuksCommand,
    },
    /// Serve images over NBD (like qemu-nbd)
    Serve(crate::cmd::serve::ServeArgs),
    /// libvirt glue: print domain XML for an export of `vmcrypt serve`
    Libvirt {
        #[command(subcommand)]
        command: crate::cmd::glue::LibvirtCommand,
    },
    /// Print the -object/-blockdev arguments with which QEMU opens an image natively
    QemuArgs(crate::cmd::glue::QemuArgsArgs),
    /// Measure cipher and PBKDF2 speed (like cryptsetup benchmark)
    Bench {
        /// Seconds to spend per measurement
        #[arg(long, default_value = "0.5")]
        seconds: f64,
    },
}

/// The `vmcrypt luks` subcommands, one file each under `cmd/luks/`.
pub use crate::cmd::luks::LuksCommand;
