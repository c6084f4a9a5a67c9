//! `vmcrypt commit` against `qemu-img commit`: an encrypted qcow2 overlay with its own
//! key over an encrypted qcow2 base with another key (and over a raw base, Nova's
//! layout) is committed by both tools on copies of the same chain. The bases then hold
//! the same plaintext (`qemu-img compare` with both keys), pass `qemu-img check`, the
//! emptied overlays still read the same through the chain, and `-d` keeps the overlay.
mod common;
use common::*;

const SIZE: u64 = 4 << 20;

struct Chain {
    sc: Scratch,
    objects: Vec<String>,
}

impl Chain {
    /// base (qcow2+LUKS key sb, or raw) <- top (qcow2+LUKS key st), with qemu-io
    /// writes in the top: partial clusters, zeros, a discard.
    fn new(raw_base: bool) -> Chain {
        let sc = Scratch::new();
        let st = sc.write("st", PASS);
        let sb = sc.write("sb", PASS2);
        let objects = vec![
            format!("secret,id=st,file={st}"),
            format!("secret,id=sb,file={sb}"),
        ];
        let plain = sc.write("plain.raw", &plaintext(SIZE as usize, "commit-base"));
        if raw_base {
            std::fs::copy(&plain, sc.p("base")).unwrap();
        } else {
            qemu_img(&[
                "convert",
                "-q",
                "--object",
                &objects[1],
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sb,encrypt.iter-time=10,cluster_size=4096",
                &plain,
                &sc.p("base"),
            ])
            .ok();
        }
        let bfmt = if raw_base { "raw" } else { "qcow2" };
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            &objects[0],
            "-b",
            &sc.p("base"),
            "-F",
            bfmt,
            "-o",
            "encrypt.format=luks,encrypt.key-secret=st,encrypt.iter-time=10",
            &sc.p("top"),
            &SIZE.to_string(),
        ])
        .ok();
        let c = Chain { sc, objects };
        let opts = c.top_opts("top", raw_base);
        c.qemu_io(
            &[
                "write -P 0x31 1000 70000",
                "write -z 200000 300000",
                "write -P 0x32 1048576 1048576",
                "discard 3145728 65536",
                "write -P 0x33 4190000 4304",
            ],
            &opts,
        );
        c
    }

    fn top_opts(&self, top: &str, raw_base: bool) -> String {
        let mut o = format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=st",
            self.sc.p(top)
        );
        if !raw_base {
            o.push_str(",backing.encrypt.key-secret=sb");
        }
        o
    }

    fn base_opts(&self, base: &str, raw_base: bool) -> String {
        if raw_base {
            format!("driver=raw,file.filename={}", self.sc.p(base))
        } else {
            format!(
                "driver=qcow2,file.filename={},encrypt.key-secret=sb",
                self.sc.p(base)
            )
        }
    }

    fn qemu_io(&self, cmds: &[&str], opts: &str) {
        let mut a: Vec<&str> = Vec::new();
        for o in &self.objects {
            a.extend(["--object", o]);
        }
        for c in cmds {
            a.extend(["-c", c]);
        }
        a.extend(["--image-opts", opts]);
        tool("qemu-io", &a).ok();
    }

    fn with_objects<'a>(&'a self, head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
        let mut a: Vec<&str> = head.to_vec();
        for o in &self.objects {
            a.extend(["--object", o.as_str()]);
        }
        a.extend_from_slice(tail);
        a
    }

    /// Plaintext of an image via qemu-img convert.
    fn read(&self, opts: &str, out: &str) -> Vec<u8> {
        let o = self.sc.p(out);
        qemu_img(&self.with_objects(&["convert"], &["--image-opts", opts, "-O", "raw", &o])).ok();
        self.sc.read(out)
    }
}

fn check_clean(c: &Chain, opts: &str) {
    qemu_img(&c.with_objects(&["check"], &["--image-opts", opts]))
        .ok()
        .stdout_has("No errors were found on the image.");
}

fn commit_case(raw_base: bool) {
    let c = Chain::new(raw_base);
    let want = c.read(&c.top_opts("top", raw_base), "want.raw");
    // A second copy of the chain for qemu-img; its overlay names the copied base.
    let bfmt = if raw_base { "raw" } else { "qcow2" };
    std::fs::copy(c.sc.p("base"), c.sc.p("qbase")).unwrap();
    std::fs::copy(c.sc.p("top"), c.sc.p("qtop")).unwrap();
    qemu_img(&c.with_objects(
        &["rebase", "-u"],
        &[
            "-b",
            &c.sc.p("qbase"),
            "-F",
            bfmt,
            "--image-opts",
            &c.top_opts("qtop", true),
        ],
    ))
    .ok();

    let top_opts = c.top_opts("top", raw_base);
    let args = c.with_objects(&["commit", "-p"], &["--image-opts", &top_opts]);
    vmcrypt(&args).ok().stdout_has("Image committed.");
    qemu_img(&c.with_objects(
        &["commit", "-q"],
        &["--image-opts", &c.top_opts("qtop", raw_base)],
    ))
    .ok();

    let base = c.read(&c.base_opts("base", raw_base), "base.raw");
    assert_same_bytes("base after vmcrypt commit", &base, &want);
    let qbase = c.read(&c.base_opts("qbase", raw_base), "qbase.raw");
    assert_same_bytes("base after qemu-img commit", &qbase, &want);
    let top = c.read(&c.top_opts("top", raw_base), "top.raw");
    assert_same_bytes("emptied overlay through the chain", &top, &want);
    check_clean(&c, &c.top_opts("top", raw_base));
    if !raw_base {
        check_clean(&c, &c.base_opts("base", raw_base));
    }
    // The overlay is empty: every byte comes from the base.
    let map = qemu_img(&c.with_objects(
        &["map", "--output=json"],
        &["--image-opts", &c.top_opts("top", raw_base)],
    ))
    .ok()
    .json();
    for e in map.as_array().unwrap() {
        assert_ne!(e["depth"], 0, "overlay still allocates {e}");
    }
}

#[test]
fn commit_encrypted_overlay_into_encrypted_base() {
    require_tool("qemu-img");
    require_tool("qemu-io");
    commit_case(false);
}

#[test]
fn commit_encrypted_overlay_into_raw_base() {
    require_tool("qemu-img");
    require_tool("qemu-io");
    commit_case(true);
}

#[test]
fn commit_d_keeps_the_overlay_and_no_backing_is_an_error() {
    let c = Chain::new(false);
    let opts = c.top_opts("top", false);
    let before = c.read(&opts, "before.raw");
    vmcrypt(&c.with_objects(&["commit", "-q", "-d"], &["--image-opts", &opts])).ok();
    let map = qemu_img(&c.with_objects(&["map", "--output=json"], &["--image-opts", &opts]))
        .ok()
        .json();
    assert!(
        map.as_array()
            .unwrap()
            .iter()
            .any(|e| e["depth"] == 0 && e["data"] == true),
        "-d must keep the overlay's clusters: {map}"
    );
    assert_same_bytes(
        "chain after commit -d",
        &c.read(&opts, "after.raw"),
        &before,
    );
    // The base alone has no backing file: commit names the problem.
    vmcrypt(&c.with_objects(&["commit"], &["--image-opts", &c.base_opts("base", false)]))
        .failed()
        .stderr_has("no backing file to commit into");
}
