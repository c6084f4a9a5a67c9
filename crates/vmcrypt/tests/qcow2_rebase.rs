//! `vmcrypt rebase` (safe mode) against `qemu-img rebase`: an encrypted qcow2 overlay
//! with its own key over base1 is moved onto base2 (a modified copy of base1, raw or
//! qcow2+LUKS with another key, named by a `json:` filename carrying its key) by both
//! tools on copies of the same image. Both results read the same plaintext as before
//! (qemu-img convert with the keys), pass `qemu-img check`, name the new backing file in
//! `qemu-img info` and have the same allocation map. `-b ""` flattens the chain; a wrong
//! or missing key for the new backing file, or a missing -F, fails and leaves the image
//! byte for byte as it was.
mod common;
use common::*;
use serde_json::Value;

const SIZE: u64 = 4 << 20;

/// Writes into the overlay: partial clusters, a zero range, a discard.
const TOP_WRITES: &[&str] = &[
    "write -P 0x31 1000 70000",
    "write -z 200000 300000",
    "write -P 0x32 1048576 65536",
    "discard 3145728 65536",
    "write -P 0x33 4190000 4304",
];

/// Changes that turn base1 into base2: some where the overlay allocates, most where it
/// does not, partial clusters and a zero run.
const BASE2_WRITES: &[&str] = &[
    "write -P 0x51 0 4096",
    "write -P 0x52 600000 5000",
    "write -z 1200000 200000",
    "write -P 0x53 2097152 1048576",
    "write -P 0x54 3145728 65536",
    "write -P 0x55 4000000 194304",
];

struct Chain {
    keys: Keyring,
    /// base1 is qcow2+LUKS (key sb1) rather than raw.
    qcow_base1: bool,
    /// base2 is qcow2+LUKS (key sb2) rather than raw.
    qcow_base2: bool,
}

impl std::ops::Deref for Chain {
    type Target = Keyring;
    fn deref(&self) -> &Keyring {
        &self.keys
    }
}

impl Chain {
    fn new(qcow_base1: bool, qcow_base2: bool) -> Chain {
        require_tool("qemu-img");
        require_tool("qemu-io");
        let keys = [("st", PASS), ("sb1", PASS2), ("sb2", PASS3), ("bad", WRONG)];
        let c = Chain {
            keys: Keyring::new(&keys),
            qcow_base1,
            qcow_base2,
        };
        let plain =
            c.sc.write("plain.raw", &plaintext(SIZE as usize, "rebase-base"));
        c.make_base(&plain, "base1", qcow_base1.then_some("sb1"));
        c.make_base(&plain, "base2", qcow_base2.then_some("sb2"));
        let b2 = c.layer_opts("base2", qcow_base2.then_some("sb2"));
        c.qemu_io(BASE2_WRITES, &b2);
        qemu_img(&c.with_objects(
            &["create", "-q", "-f", "qcow2"],
            &[
                "-b",
                &c.sc.p("base1"),
                "-F",
                c.fmt(qcow_base1),
                "-o",
                "encrypt.format=luks,encrypt.key-secret=st,encrypt.iter-time=10",
                &c.sc.p("top"),
                &SIZE.to_string(),
            ],
        ))
        .ok();
        c.qemu_io(TOP_WRITES, &c.top_opts("top", true));
        c
    }

    fn fmt(&self, qcow: bool) -> &'static str {
        if qcow { "qcow2" } else { "raw" }
    }

    /// A base image from `plain`: raw, or qcow2+LUKS with 4 KiB clusters and `key`.
    fn make_base(&self, plain: &str, name: &str, key: Option<&str>) {
        let out = self.sc.p(name);
        match key {
            None => {
                std::fs::copy(plain, &out).unwrap();
            }
            Some(k) => {
                let o = format!(
                    "encrypt.format=luks,encrypt.key-secret={k},encrypt.iter-time=10,cluster_size=4096"
                );
                qemu_img(&self.with_objects(
                    &["convert", "-q", "-f", "raw", "-O", "qcow2"],
                    &["-o", &o, plain, &out],
                ))
                .ok();
            }
        }
    }

    /// `--image-opts` of one image on its own (no backing options).
    fn layer_opts(&self, name: &str, key: Option<&str>) -> String {
        match key {
            None => format!("driver=raw,file.filename={}", self.sc.p(name)),
            Some(k) => format!(
                "driver=qcow2,file.filename={},encrypt.key-secret={k}",
                self.sc.p(name)
            ),
        }
    }

    /// `--image-opts` of an overlay; `old_chain`: it still names base1 (which may need
    /// its key); afterwards base2's key travels in the header's `json:` name.
    fn top_opts(&self, top: &str, old_chain: bool) -> String {
        let mut o = format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=st",
            self.sc.p(top)
        );
        if old_chain && self.qcow_base1 {
            o.push_str(",backing.encrypt.key-secret=sb1");
        }
        o
    }

    /// The `-b` argument naming base2 (a `json:` filename with its key when encrypted).
    fn new_backing(&self, key: &str) -> String {
        if self.qcow_base2 {
            format!(
                r#"json:{{"driver":"qcow2","encrypt.key-secret":"{key}","file":{{"driver":"file","filename":"{}"}}}}"#,
                self.sc.p("base2")
            )
        } else {
            self.sc.p("base2")
        }
    }

    fn map(&self, opts: &str) -> Value {
        qemu_img(&self.with_objects(&["map", "--output=json"], &["--image-opts", opts]))
            .ok()
            .json()
    }

    fn copy(&self, from: &str, to: &str) {
        std::fs::copy(self.sc.path(from), self.sc.path(to)).unwrap();
    }

    /// `rebase` by `tool` (vmcrypt or qemu-img) of `top` with extra `flags`.
    fn rebase_args<'a>(&'a self, flags: &[&'a str], opts: &'a str) -> Vec<&'a str> {
        let mut tail = flags.to_vec();
        tail.extend(["--image-opts", opts]);
        self.with_objects(&["rebase"], &tail)
    }
}

/// The ranges an image allocates itself (depth 0 and present), as (start, length, zero).
fn own_ranges(map: &Value) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for e in map.as_array().expect("map is a list") {
        if e["depth"] != 0 || e["present"] != true {
            continue;
        }
        let (s, l, z) = (
            e["start"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            e["zero"] == true,
        );
        match out.last_mut() {
            Some(last) if last.0 + last.1 == s && last.2 == z => last.1 += l,
            _ => out.push((s, l, z)),
        }
    }
    out
}

fn info_backing(c: &Chain, img: &str) -> (Option<String>, Option<String>) {
    let info = qemu_img(&["info", "--output=json", &c.sc.p(img)])
        .ok()
        .json();
    let s = |k: &str| info[k].as_str().map(str::to_string);
    (s("backing-filename"), s("backing-filename-format"))
}

fn rebase_case(qcow_base1: bool, qcow_base2: bool) {
    let c = Chain::new(qcow_base1, qcow_base2);
    let want = c.read(&c.top_opts("top", true), "want.raw");
    let before = own_ranges(&c.map(&c.top_opts("top", true)));
    c.copy("top", "qtop");
    c.copy("top", "utop");
    let nb = c.new_backing("sb2");
    let fmt2 = c.fmt(qcow_base2);
    let flags = ["-b", nb.as_str(), "-F", fmt2];

    // The test can fail: moving the header alone (-u) changes what the image reads.
    let uopts = c.top_opts("utop", false);
    let mut uflags = vec!["-u"];
    uflags.extend(flags);
    qemu_img(&c.rebase_args(&uflags, &uopts)).ok();
    let unsafe_read = c.read(&c.top_opts("utop", false), "unsafe.raw");
    assert_ne!(
        unsafe_read, want,
        "base1 and base2 must differ where top is unallocated"
    );

    let topts = c.top_opts("top", true);
    let mut pflags = vec!["-p"];
    pflags.extend(flags);
    vmcrypt(&c.rebase_args(&pflags, &topts)).ok();
    let qopts = c.top_opts("qtop", true);
    qemu_img(&c.rebase_args(&flags, &qopts)).ok();

    for img in ["top", "qtop"] {
        let opts = c.top_opts(img, false);
        let got = c.read(&opts, &format!("{img}.after.raw"));
        assert_same_bytes(&format!("{img} after rebase"), &got, &want);
        c.check_clean(&opts);
        assert_eq!(
            info_backing(&c, img),
            (Some(nb.clone()), Some(fmt2.to_string())),
            "{img}: qemu-img info must show the new backing file"
        );
    }
    let ours = own_ranges(&c.map(&c.top_opts("top", false)));
    let theirs = own_ranges(&c.map(&c.top_opts("qtop", false)));
    assert_eq!(ours, theirs, "allocation of vmcrypt's result vs qemu-img's");
    assert_ne!(ours, before, "the rebase copied nothing into the image");
}

#[test]
fn rebase_raw_base_onto_encrypted_qcow2_with_json_key() {
    rebase_case(false, true);
}

#[test]
fn rebase_encrypted_base_onto_raw() {
    rebase_case(true, false);
}

#[test]
fn rebase_encrypted_base_onto_encrypted_base_with_another_key() {
    rebase_case(true, true);
}

#[test]
fn rebase_to_no_backing_flattens() {
    let c = Chain::new(true, false);
    let want = c.read(&c.top_opts("top", true), "want.raw");
    c.copy("top", "qtop");
    let topts = c.top_opts("top", true);
    vmcrypt(&c.rebase_args(&["-q", "-b", ""], &topts)).ok();
    let qopts = c.top_opts("qtop", true);
    qemu_img(&c.rebase_args(&["-b", ""], &qopts)).ok();
    for img in ["top", "qtop"] {
        let opts = c.top_opts(img, false);
        let got = c.read(&opts, &format!("{img}.flat.raw"));
        assert_same_bytes(&format!("{img} flattened"), &got, &want);
        c.check_clean(&opts);
        assert_eq!(info_backing(&c, img), (None, None), "{img} has no backing");
        for e in c.map(&opts).as_array().unwrap() {
            assert_eq!(e["depth"], 0, "{img}: a flattened image has one layer: {e}");
        }
    }
    assert_eq!(
        own_ranges(&c.map(&c.top_opts("top", false))),
        own_ranges(&c.map(&c.top_opts("qtop", false))),
        "allocation of vmcrypt's flattened image vs qemu-img's"
    );
}

#[test]
fn bad_new_backing_leaves_the_image_untouched() {
    let c = Chain::new(false, true);
    let orig = c.sc.read("top");
    let topts = c.top_opts("top", true);
    let wrong = c.new_backing("bad");
    let missing = c.new_backing("nosuchid");
    let good = c.new_backing("sb2");
    let cases: [(&[&str], &str); 4] = [
        (
            &["-b", &wrong, "-F", "qcow2"],
            "no key available with this passphrase",
        ),
        (&["-b", &missing, "-F", "qcow2"], "nosuchid"),
        (&["-b", &good], "backing format must be specified"),
        (&["-b", &good, "-F", "raw"], "conflicts"),
    ];
    for (flags, msg) in cases {
        vmcrypt(&c.rebase_args(flags, &topts))
            .failed()
            .stderr_has(msg);
        assert!(c.sc.read("top") == orig, "{msg}: the image changed");
    }
    // qemu-img refuses the key problems too.
    for flags in [&cases[0].0, &cases[1].0] {
        qemu_img(&c.rebase_args(flags, &topts)).failed();
        assert!(c.sc.read("top") == orig, "qemu-img changed the image");
    }
}

#[test]
fn name_too_long_for_the_header_is_refused_before_copying() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let base = sc.write("base.raw", &plaintext(1 << 20, "rebase-long"));
    let img = sc.p("small.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        "-b",
        &base,
        "-F",
        "raw",
        &img,
    ])
    .ok();
    let before = sc.read("small.qcow2");
    let long = sc.p(&"x".repeat(400));
    vmcrypt(&["rebase", "-b", &long, "-F", "raw", &img])
        .failed()
        .stderr_has("first cluster");
    assert!(sc.read("small.qcow2") == before, "the image changed");
}

#[test]
fn relative_name_is_resolved_from_the_image_directory() {
    require_tool("qemu-img");
    let sc = Scratch::new();
    let plain = plaintext(1 << 20, "rebase-rel");
    sc.write("old.raw", &plain);
    let mut other = plain.clone();
    other[70000..200000].fill(0x77);
    sc.write("new.raw", &other);
    let img = sc.p("ov.qcow2");
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "old.raw", "-F", "raw", &img,
    ])
    .ok();
    std::fs::copy(&img, sc.path("q.qcow2")).unwrap();
    // Run from elsewhere: "new.raw" means the file next to the image, as in the header.
    vmcrypt(&["rebase", "-q", "-b", "new.raw", "-F", "raw", &img]).ok();
    qemu_img(&[
        "rebase",
        "-q",
        "-b",
        "new.raw",
        "-F",
        "raw",
        &sc.p("q.qcow2"),
    ])
    .ok();
    for name in ["ov.qcow2", "q.qcow2"] {
        let info = qemu_img(&["info", "--output=json", &sc.p(name)])
            .ok()
            .json();
        assert_eq!(info["backing-filename"], "new.raw");
        let out = sc.p(&format!("{name}.raw"));
        qemu_img(&["convert", "-O", "raw", &sc.p(name), &out]).ok();
        assert_same_bytes(name, &sc.read(&format!("{name}.raw")), &plain);
        qemu_img(&["check", &sc.p(name)]).ok();
    }
    let map = |n: &str| qemu_img(&["map", "--output=json", &sc.p(n)]).ok().json();
    let strip = |m: Value| -> Vec<(u64, u64, u64)> {
        m.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let g = |k: &str| e[k].as_u64().unwrap();
                (g("start"), g("length"), g("depth"))
            })
            .collect()
    };
    assert_eq!(strip(map("ov.qcow2")), strip(map("q.qcow2")));
}
