//! `vmcrypt luks reencrypt --encrypt` against `cryptsetup reencrypt --encrypt
//! --force-offline-reencrypt` on plain images: with `--reduce-device-size` (datashift,
//! header in the freed start) and with a detached header (checksum, journal). Whole
//! runs are read back by vmcrypt and decrypted again by cryptsetup itself; each tool's
//! start metadata equals the other's; each tool is killed (-9) at random points and the
//! other finishes the run, with the plaintext identical every time, 512- and 4096-byte
//! sectors. Bad input is refused with nothing written.
mod reencrypt_support;

use reencrypt_support::{
    Rng, dump_json, in_progress, interrupt, ok, refused_for_bad_sha256_kernel, sha256, vmcrypt,
    with_bad_sha256_kernel,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;
const DATA: u64 = 24 * MIB;
/// `--reduce-device-size`: a 1 MiB data shift, so a run has 24 hotzones.
const REDUCE: &str = "2M";
const SHIFT: u64 = MIB;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Reduce,
    /// A detached header with this resilience.
    Detached(&'static str),
}

struct Plain {
    dir: tempfile::TempDir,
    img: PathBuf,
    hdr: Option<PathBuf>,
    pw: PathBuf,
    sha: String,
    layout: Layout,
    sector: u32,
    /// Plaintext bytes kept.
    data: u64,
}

/// A plain image of DATA random bytes (plus the reduction, also random).
fn plain(sector: u32, layout: Layout, seed: u64) -> Plain {
    plain_sized(sector, layout, seed, DATA)
}

fn plain_sized(sector: u32, layout: Layout, seed: u64, size: u64) -> Plain {
    let dir = tempfile::tempdir().unwrap();
    let (img, pw) = (dir.path().join("d.img"), dir.path().join("pw"));
    std::fs::write(&pw, b"secret").unwrap();
    let extra = if layout == Layout::Reduce {
        2 * SHIFT
    } else {
        0
    };
    let mut rng = Rng(seed | 1);
    let data: Vec<u8> = (0..size + extra).map(|_| rng.next() as u8).collect();
    std::fs::write(&img, &data).unwrap();
    let p = dir.path().join("plain");
    std::fs::write(&p, &data[..size as usize]).unwrap();
    let hdr = matches!(layout, Layout::Detached(_)).then(|| dir.path().join("d.hdr"));
    Plain {
        sha: sha256(&p),
        dir,
        img,
        hdr,
        pw,
        layout,
        sector,
        data: size,
    }
}

impl Plain {
    fn header(&self) -> &Path {
        self.hdr.as_deref().unwrap_or(&self.img)
    }

    /// The options that start an encryption of this layout.
    fn start(&self) -> Vec<String> {
        let mut v: Vec<String> = ["--encrypt", "--type", "luks2", "--sector-size"]
            .map(String::from)
            .into();
        v.push(self.sector.to_string());
        match self.layout {
            Layout::Reduce => v.extend(["--reduce-device-size".into(), REDUCE.into()]),
            Layout::Detached(r) => v.extend(["--resilience".into(), r.into()]),
        }
        v
    }

    fn with_header(&self, c: &mut Command) {
        if let Some(h) = &self.hdr {
            c.arg("--header").arg(h);
        }
    }

    /// cryptsetup in the test's directory: an encryption with a shift builds its header
    /// in a `LUKS2-temp-*.new` file in the current directory, left there when killed.
    fn cryptsetup_cmd(&self) -> Command {
        let mut c = Command::new("cryptsetup");
        c.current_dir(self.dir.path());
        c
    }

    fn cryptsetup(&self, extra: &[String]) -> Command {
        let mut c = self.cryptsetup_cmd();
        c.args(["reencrypt", "--force-offline-reencrypt", "-q", "--key-file"])
            .arg(&self.pw)
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
        self.with_header(&mut c);
        c.args(extra)
            .arg(&self.img)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn vmcrypt(&self, extra: &[String]) -> Command {
        let mut c = vmcrypt();
        c.args(["luks", "reencrypt", "--no-progress", "--key-file"])
            .arg(&self.pw)
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
        self.with_header(&mut c);
        c.args(extra).arg(&self.img);
        c
    }

    /// The header is LUKS and names an encryption in progress.
    fn running(&self) -> bool {
        let luks = Command::new("cryptsetup")
            .arg("isLuks")
            .arg(self.header())
            .status()
            .unwrap()
            .success();
        luks && in_progress(self.header()).0
    }

    /// cryptsetup recovers an interrupted hotzone with `repair`, then resumes.
    fn cryptsetup_finish(&self) {
        if in_progress(self.header()).1 {
            let mut c = self.cryptsetup_cmd();
            c.args(["repair", "-q", "--key-file"]).arg(&self.pw);
            self.with_header(&mut c);
            ok(c.arg(&self.img));
        }
        if in_progress(self.header()).0 {
            ok(&mut self.cryptsetup(&["--resume-only".into()]));
        }
    }

    fn vmcrypt_finish(&self) {
        if in_progress(self.header()).0 {
            ok(&mut self.vmcrypt(&["--resume-only".into()]));
        }
    }

    /// The header is clean, its one segment is the encryption, and the data decrypts
    /// (through vmcrypt) to the plaintext.
    #[track_caller]
    fn check(&self, what: &str) {
        let dump = ok(Command::new("cryptsetup")
            .arg("luksDump")
            .arg(self.header()));
        assert!(!dump.contains("Requirements"), "{what}: {dump}");
        assert!(!dump.contains("reencrypt"), "{what}: {dump}");
        let j = dump_json(self.header());
        let segs = j["segments"].as_object().unwrap();
        assert_eq!(segs.len(), 1, "{what}: {segs:?}");
        let want_off = if self.layout == Layout::Reduce {
            SHIFT
        } else {
            0
        };
        assert_eq!(segs["0"]["type"], "crypt", "{what}");
        assert_eq!(segs["0"]["offset"], want_off.to_string(), "{what}");
        assert_eq!(segs["0"]["sector_size"], self.sector, "{what}");
        let out = self.dir.path().join("out");
        let secret = format!("secret,id=s0,file={}", self.pw.display());
        let mut src = format!(
            "driver=luks,key-secret=s0,file.filename={}",
            self.img.display()
        );
        if let Some(h) = &self.hdr {
            src.push_str(&format!(",header.filename={}", h.display()));
        }
        ok(vmcrypt()
            .args(["convert", "-q", "-O", "raw", "--object", &secret])
            .args(["--image-opts", &src, out.to_str().unwrap()]));
        let head = self.dir.path().join("head");
        std::fs::write(&head, &std::fs::read(&out).unwrap()[..self.data as usize]).unwrap();
        assert_eq!(sha256(&head), self.sha, "{what}: plaintext differs");
    }

    /// cryptsetup's own view: its `--decrypt` turns the image back into the plaintext
    /// (with a shift, into a new detached header, moving the data back to offset 0).
    #[track_caller]
    fn check_cryptsetup_decrypts(&self, what: &str) {
        let mut c = self.cryptsetup_cmd();
        c.args(["reencrypt", "--decrypt", "--force-offline-reencrypt", "-q"])
            .arg("--key-file")
            .arg(&self.pw)
            .arg("--header")
            .arg(self.hdr.clone().unwrap_or(self.dir.path().join("dec.hdr")));
        ok(c.arg(&self.img));
        let head = self.dir.path().join("head");
        std::fs::write(
            &head,
            &std::fs::read(&self.img).unwrap()[..self.data as usize],
        )
        .unwrap();
        assert_eq!(
            sha256(&head),
            self.sha,
            "{what}: cryptsetup's decryption differs"
        );
    }

    /// Start `cmd` on a fresh copy of the image and kill it after a random delay below
    /// `max_ms`, until a run is caught in the middle. Returns the delay that did.
    fn kill_mid_run(&self, rng: &mut Rng, max_ms: u64, cmd: &dyn Fn() -> Command) -> u64 {
        let original = std::fs::read(&self.img).unwrap();
        for _ in 0..60 {
            std::fs::write(&self.img, &original).unwrap();
            if let Some(h) = &self.hdr {
                let _ = std::fs::remove_file(h);
            }
            let ms = 1 + rng.next() % max_ms;
            interrupt(cmd(), ms, "-KILL");
            if self.running() {
                return ms;
            }
        }
        panic!("no run was interrupted in the middle within 60 tries");
    }
}

const LAYOUTS: [Layout; 3] = [
    Layout::Reduce,
    Layout::Detached("checksum"),
    Layout::Detached("journal"),
];

#[test]
fn whole_runs_read_back_and_cryptsetup_decrypts_them() {
    for sector in [512u32, 4096] {
        for layout in LAYOUTS {
            let p = plain(sector, layout, 3 + u64::from(sector));
            ok(&mut p.vmcrypt(&p.start()));
            let what = format!("{sector} {layout:?}");
            p.check(&what);
            p.check_cryptsetup_decrypts(&what);
        }
    }
    let p = plain(512, Layout::Detached("none"), 5);
    ok(&mut p.vmcrypt(&p.start()));
    p.check("none");
}

/// The metadata without its random parts (salts, digests, UUID).
fn normalized(img: &Path) -> Value {
    fn strip(v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.remove("salt");
            o.remove("digest");
            o.values_mut().for_each(strip);
        }
    }
    let mut j = dump_json(img);
    strip(&mut j);
    j
}

#[test]
fn start_metadata_equals_cryptsetups_and_each_tool_resumes_the_other() {
    for sector in [512u32, 4096] {
        for layout in LAYOUTS {
            let what = format!("{sector} {layout:?}");
            let init = |p: &Plain| {
                let mut a = p.start();
                a.push("--init-only".into());
                a
            };
            let ours = plain(sector, layout, 7);
            ok(&mut ours.vmcrypt(&init(&ours)));
            let theirs = plain(sector, layout, 7);
            ok(&mut theirs.cryptsetup(&init(&theirs)));
            assert_eq!(
                normalized(ours.header()),
                normalized(theirs.header()),
                "{what}: start metadata differs"
            );
            ours.cryptsetup_finish();
            ours.check(&format!("{what}: vmcrypt started, cryptsetup finished"));
            theirs.vmcrypt_finish();
            theirs.check(&format!("{what}: cryptsetup started, vmcrypt finished"));
        }
    }
}

/// Kill one tool (-9) at random points of its run, for every layout and sector size,
/// and finish with the other; prints how many kills hit a hotzone in flight.
fn kill_and_finish(seed: u64, cryptsetup_killed: bool) {
    let mut rng = Rng(seed);
    let mut hot = 0;
    for sector in [512u32, 4096] {
        for layout in LAYOUTS {
            for round in 0..2 {
                let p = plain(sector, layout, rng.next());
                let mut args = p.start();
                if layout != Layout::Reduce {
                    args.extend(["--hotzone-size".into(), "1M".into()]);
                }
                let ms = p.kill_mid_run(&mut rng, 400, &|| match cryptsetup_killed {
                    true => p.cryptsetup(&args),
                    false => p.vmcrypt(&args),
                });
                hot += u32::from(in_progress(p.header()).1);
                match cryptsetup_killed {
                    true => p.vmcrypt_finish(),
                    false => p.cryptsetup_finish(),
                }
                p.check(&format!(
                    "{sector} {layout:?} round {round} killed at {ms} ms"
                ));
            }
        }
    }
    eprintln!("{hot} of 12 kills hit a hotzone in flight");
}

#[test]
fn cryptsetup_killed_vmcrypt_finishes() {
    kill_and_finish(0xe7c, true);
}

#[test]
fn vmcrypt_killed_cryptsetup_finishes() {
    kill_and_finish(0xd1e, false);
}

/// A plaintext that is not a multiple of the shift (5.5 MiB, 1 MiB shift): the short
/// hotzone above the moved segment (cryptsetup's `[shift, L)` case). Each tool starts
/// and stops cleanly after two hotzones, the other finishes.
#[test]
fn uneven_size_stopped_by_one_tool_finished_by_the_other() {
    for sector in [512u32, 4096] {
        let size = 11 * MIB / 2;
        let ours = plain_sized(sector, Layout::Reduce, 13, size);
        let mut a = ours.start();
        a.extend(["--max-hotzones".into(), "2".into()]);
        ok(&mut ours.vmcrypt(&a));
        assert!(ours.running(), "not paused");
        ours.cryptsetup_finish();
        ours.check(&format!("{sector}: vmcrypt stopped, cryptsetup finished"));

        let theirs = plain_sized(sector, Layout::Reduce, 14, size);
        let mut a = theirs.start();
        a.push("--init-only".into());
        ok(&mut theirs.cryptsetup(&a));
        ok(&mut theirs.vmcrypt(&["--resume-only".into(), "--max-hotzones".into(), "5".into()]));
        assert!(theirs.running(), "not paused before the last hotzone");
        theirs.cryptsetup_finish();
        theirs.check(&format!("{sector}: cryptsetup, vmcrypt, cryptsetup"));
    }
}

/// Each bad request fails with a message naming the problem, and the image (and the
/// header file) are exactly as before.
#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let p = plain(512, Layout::Reduce, 9);
    let refuse = |p: &Plain, args: &[&str], want: &str| {
        let before = std::fs::read(&p.img).unwrap();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = p.vmcrypt(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(std::fs::read(&p.img).unwrap() == before, "{args:?} wrote");
        assert!(
            p.hdr.as_ref().is_none_or(|h| !h.exists()),
            "{args:?} made a header"
        );
    };
    refuse(
        &p,
        &["--encrypt", "--reduce-device-size", "64K"],
        "too small",
    );
    refuse(
        &p,
        &["--encrypt", "--reduce-device-size", "1001K"],
        "multiple of 4096",
    );
    refuse(
        &p,
        &["--encrypt", "--reduce-device-size", "2G"],
        "larger than 1 GiB",
    );
    refuse(&p, &["--encrypt"], "either --reduce-device-size");
    refuse(
        &p,
        &[
            "--encrypt",
            "--reduce-device-size",
            "2M",
            "--resilience",
            "journal",
        ],
        "datashift",
    );
    refuse(
        &p,
        &["--encrypt", "--reduce-device-size", "2M", "--type", "luks1"],
        "LUKS2",
    );
    let small = plain(512, Layout::Reduce, 10);
    std::fs::write(&small.img, vec![7u8; 2 * MIB as usize]).unwrap();
    refuse(
        &small,
        &["--encrypt", "--reduce-device-size", "2M"],
        "too small",
    );
    // Already encrypted: by vmcrypt, and a cryptsetup LUKS2 image.
    ok(&mut p.vmcrypt(&p.start()));
    refuse(
        &p,
        &["--encrypt", "--reduce-device-size", "2M"],
        "already has a LUKS header",
    );
    let d = plain(512, Layout::Detached("checksum"), 11);
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks2", "-q", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--key-file"])
        .args([&d.pw, &d.img]));
    let args = [
        "--encrypt",
        "--header",
        d.hdr.as_ref().unwrap().to_str().unwrap(),
    ];
    let before = std::fs::read(&d.img).unwrap();
    let out = vmcrypt()
        .args(["luks", "reencrypt", "--no-progress", "--key-file"])
        .arg(&d.pw)
        .args(args)
        .arg(&d.img)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has a LUKS header"));
    assert!(std::fs::read(&d.img).unwrap() == before);
    assert!(!d.hdr.as_ref().unwrap().exists());
}

/// `VMCRYPT_SHA256_KERNEL` naming no kernel: an encryption with checksum resilience is
/// refused before anything is written, when it starts and when it resumes (its
/// engine checks the stored checksum hash when it loads the run); a journal run and
/// a `--reduce-device-size` run (datashift) hash nothing and are not refused.
#[test]
fn a_bad_sha256_kernel_name_refuses_only_runs_that_hash() {
    let p = plain(512, Layout::Detached("checksum"), 41);
    let hdr = p.hdr.clone().unwrap();
    refused_for_bad_sha256_kernel(&mut p.vmcrypt(&p.start()), &[&p.img, &hdr]);
    assert!(!hdr.exists(), "a refused start made a header");
    let mut init = p.start();
    init.push("--init-only".into());
    ok(&mut p.vmcrypt(&init));
    refused_for_bad_sha256_kernel(&mut p.vmcrypt(&["--resume-only".into()]), &[&p.img, &hdr]);
    p.vmcrypt_finish();
    p.check("checksum, resumed without the variable");
    for layout in [Layout::Detached("journal"), Layout::Reduce] {
        let p = plain(512, layout, 42);
        ok(with_bad_sha256_kernel(&mut p.vmcrypt(&p.start())));
        p.check(&format!("{layout:?} with a bad kernel name"));
    }
}
