//! The `check` job (`qemu-img check`): a qcow2 image goes to the refcount checker, which
//! reads the file node itself (no key needed) and can repair leaks (`-r`); any other
//! format is opened and asked for its own metadata problems (LUKS2 header copies), and
//! a LUKS image too damaged to open is one problem. [`CheckOutcome::exit_code`] gives
//! qemu-img's exit status for each outcome.
use super::image_arg::Access;
use super::{Env, ImageArg};
use crate::drivers::file::FileDriver;
use crate::drivers::qcow2::check::{self as qcheck, CheckLimits, CheckReport, Repair};
use crate::graph;
use crate::spec::NodeSpec;

use serde_json::{Value, json};
use std::path::Path;
use vmcrypt_error::{Error, ErrorKind, Result, bail, ensure};

/// qemu-img's exit status for an image whose format has no check.
pub const EXIT_NOT_SUPPORTED: u8 = 63;

/// What `vmcrypt check` was asked for.
#[derive(Clone, Debug, Default)]
pub struct CheckRequest {
    pub image: ImageArg,
    /// `-r leaks|all` (qcow2 only).
    pub repair: Option<Repair>,
}

/// `-r`'s argument.
pub fn parse_repair(mode: &str) -> Result<Repair> {
    match mode {
        "leaks" => Ok(Repair::Leaks),
        "all" => Ok(Repair::All),
        o => bail!(Usage, "-r must be 'leaks' or 'all', not '{o}'"),
    }
}

/// The qcow2 checker's result.
#[derive(Clone, Debug)]
pub struct Qcow2Check {
    /// The (final) check.
    pub report: CheckReport,
    /// Messages of a repair's first pass (printed before the report's own).
    pub repair_messages: Vec<String>,
    /// Printed before the human summary after a repair ("The following inconsistencies...").
    pub preamble: String,
}

/// A driver's own check (formats other than qcow2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverCheck {
    /// The format checked.
    pub format: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

/// What a check found.
#[derive(Debug)]
pub enum CheckOutcome {
    Qcow2(Qcow2Check),
    Driver(DriverCheck),
    /// The image's format has no check.
    NotSupported,
    /// The qcow2 checker could not run (or repair): qemu-img's "Check failed".
    Failed(Error),
}

impl CheckOutcome {
    /// qemu-img check's exit status: 0 clean, 1 check failed or internal errors,
    /// 2 corruptions, 3 leaks, 63 format without checks.
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckOutcome::Qcow2(q) => q.report.exit_code(),
            CheckOutcome::Driver(d) if d.problems.is_empty() => 0,
            CheckOutcome::Driver(_) => 2,
            CheckOutcome::NotSupported => EXIT_NOT_SUPPORTED,
            CheckOutcome::Failed(_) => 1,
        }
    }
}

impl DriverCheck {
    /// The `--output=json` object.
    pub fn json(&self, filename: &str) -> Value {
        json!({"filename": filename, "format": self.format,
               "check-errors": self.problems.len(), "corruptions": self.problems})
    }

    /// The human text.
    pub fn human(&self) -> String {
        if self.problems.is_empty() {
            return "No errors were found on the image.\n".into();
        }
        let mut s = String::new();
        for p in &self.problems {
            s += &format!("ERROR: {p}\n");
        }
        s + &format!(
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
            self.problems.len()
        )
    }
}

/// Check (and with `repair` fix) the image of `req`. Errors are returned only for an
/// unusable argument or an image that cannot be opened; a qcow2 checker failure is
/// [`CheckOutcome::Failed`].
pub fn run(req: &CheckRequest, env: &Env) -> Result<CheckOutcome> {
    let spec = req.image.to_spec()?;
    if let Some(path) = qcow2_file(&spec)? {
        ensure!(
            !(req.image.force_share && req.repair.is_some()),
            Usage,
            "-U (force-share) can only be used with read-only images: -r writes the image"
        );
        let locks = !req.image.force_share && spec.file().is_none_or(file_locks);
        return Ok(check_qcow2(&path, req.repair, locks).unwrap_or_else(CheckOutcome::Failed));
    }
    match graph::open(&spec, &req.image.context(env, Access::METADATA)?) {
        Ok(node) => Ok(match node.as_check() {
            Some(c) => CheckOutcome::Driver(DriverCheck {
                format: node.driver_name().to_string(),
                problems: c.check(),
            }),
            None => CheckOutcome::NotSupported,
        }),
        Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::LimitExceeded) => {
            Ok(CheckOutcome::Driver(DriverCheck {
                format: "luks".into(),
                problems: vec![e.display_chain()],
            }))
        }
        Err(e) => Err(e),
    }
}

/// The file of `spec` if its top node is (or probes as) qcow2.
fn qcow2_file(spec: &NodeSpec) -> Result<Option<String>> {
    let driver = match spec.driver() {
        Some(d) => Some(d),
        None => graph::probed_format(spec)?,
    };
    if driver != Some("qcow2") {
        return Ok(None);
    }
    spec.file_name()
}

/// Whether the `file` child `f` is opened with image locking (not `locking=off`).
fn file_locks(f: &NodeSpec) -> bool {
    !matches!(f, NodeSpec::File(f) if !f.locks())
}

/// The qcow2 checker on the file at `path` (opened read-write only to repair; without
/// image locking unless `locks`).
fn check_qcow2(path: &str, repair: Option<Repair>, locks: bool) -> Result<CheckOutcome> {
    let file = FileDriver::open_with(Path::new(path), repair.is_none(), locks)?;
    let limits = CheckLimits::default();
    let check = match repair {
        None => Qcow2Check {
            report: qcheck::check_with(&file, &limits)?,
            repair_messages: Vec::new(),
            preamble: String::new(),
        },
        Some(mode) => {
            let r = qcheck::repair(&file, mode, &limits)?;
            Qcow2Check {
                preamble: r.human_preamble(),
                repair_messages: r.messages,
                report: r.report,
            }
        }
    };
    Ok(CheckOutcome::Qcow2(check))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::testutil::{Scratch, sized};

    fn check(path: &str, format: Option<&str>, repair: Option<Repair>) -> CheckOutcome {
        let req = CheckRequest {
            image: ImageArg::file(path, format),
            repair,
        };
        run(&req, &Env::default()).unwrap()
    }

    #[test]
    fn raw_images_have_no_check() {
        let sc = Scratch::new();
        let out = check(&sc.raw("img", &[0u8; 4096]), Some("raw"), None);
        assert!(matches!(out, CheckOutcome::NotSupported));
        assert_eq!(out.exit_code(), 63);
    }

    #[test]
    fn a_fresh_qcow2_is_clean() {
        let sc = Scratch::new();
        let img = sc.create("img", sized("qcow2", "1M"));
        let CheckOutcome::Qcow2(q) = check(&img, None, None) else {
            panic!("a qcow2 image goes to the qcow2 checker");
        };
        assert_eq!(q.report.exit_code(), 0);
        let human = q.report.human();
        assert!(human.starts_with("No errors were found on the image.\n"));
    }

    #[test]
    fn a_broken_qcow2_fails_the_check() {
        let sc = Scratch::new();
        let img = sc.raw("img", &[0u8; 4096]);
        let out = check(&img, Some("qcow2"), Some(parse_repair("leaks").unwrap()));
        assert!(matches!(out, CheckOutcome::Failed(_)));
        assert_eq!(out.exit_code(), 1);
        assert!(parse_repair("some").is_err());
    }

    #[test]
    fn driver_problems_render_like_qemu_img() {
        let d = DriverCheck {
            format: "luks".into(),
            problems: vec!["bad".into()],
        };
        assert!(d.human().starts_with("ERROR: bad\n\n1 errors were found"));
        assert_eq!(d.json("x")["check-errors"], 1);
        assert_eq!(CheckOutcome::Driver(d).exit_code(), 2);
    }
}
