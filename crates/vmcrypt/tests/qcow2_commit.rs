//! `vmcrypt commit` against `qemu-img commit`: an encrypted qcow2 overlay with its own
//! key over an encrypted qcow2 base with another key (and over a raw base, Nova's
//! layout) is committed by both tools on copies of the same chain. The bases then hold
//! the same plaintext (`qemu-img compare` with both keys), pass `qemu-img check`, the
//! emptied overlays still read the same through the chain, and `-d` keeps the overlay.
mod common;
use common::*;

const SIZE: u64 = 4 << 20;

struct Chain {
    keys: Keyring,
}

impl std::ops::Deref for Chain {
    type Target = Keyring;
    fn deref(&self) -> &Keyring {
        &self.keys
    }
}

impl Chain {
    /// base (qcow2+LUKS key sb, or raw) <- top (qcow2+LUKS key st), with qemu-io
    /// writes in the top: partial clusters, zeros, a discard.
    fn new(raw_base: bool) -> Chain {
        let keys = Keyring::new(&[("st", PASS), ("sb", PASS2)]);
        let (sc, objects) = (&keys.sc, &keys.objects);
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
        let c = Chain { keys };
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
    c.check_clean(&c.top_opts("top", raw_base));
    if !raw_base {
        c.check_clean(&c.base_opts("base", raw_base));
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
