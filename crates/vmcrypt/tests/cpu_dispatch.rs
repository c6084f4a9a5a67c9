//! The run-time CPU dispatch on x86 CPUs other than the host's. Each emulated run is
//! `qemu-x86_64 -cpu MODEL vmcrypt ...` (TCG): the binary sees that model's CPUID, and an
//! instruction the model lacks is a SIGILL that fails the run. For each model of
//! `cpu_models::MODELS` (Zen 2, Zen 3, Haswell, Westmere, and qemu64 without AES-NI):
//!
//! * `vmcrypt bench` names the model (so the run really was emulated) and the AES and
//!   SHA-256 kernels that the model's features call for ([`Model::expected_aes`],
//!   [`Model::expected_sha256`], from the feature table, not a name written per run);
//! * images made under emulation (LUKS2 AES-XTS with 256- and 512-bit keys and 512- and
//!   4096-byte sectors, one with a PBKDF2 and one with an Argon2id key slot; LUKS1
//!   aes-cbc-essiv:sha256; qcow2 with LUKS) hold the data written, read natively with
//!   the host's best kernel, and images made natively read back under emulation;
//! * `VMCRYPT_AES_KERNEL` forcing each kernel works where the model has it and is
//!   refused by name, with a non-zero exit and nothing written, where it does not.
//!
//! Speed is not measured. TCG has no VPCLMULQDQ, so the VAES kernels never run here
//! (EPYC-Milan-v2 falls back to aesni; a real Zen 3 picks vaes-avx2): aes_kernels.rs in
//! vmcrypt-crypto checks them on an AVX-512 host by forcing each one, and runs its own
//! kernel checks against OpenSSL on these models too.
mod common;

/// The emulated models and the kernels each should get, shared with vmcrypt-crypto's
/// kernel tests.
#[path = "../../vmcrypt-crypto/tests/common/cpu_models.rs"]
mod cpu_models;

use common::*;
use cpu_models::{AES_KERNELS, Model, QEMU_USER, without_tcg_warnings};

/// The variable that forces an AES kernel.
const AES_ENV: &str = "VMCRYPT_AES_KERNEL";

/// Where a vmcrypt command runs: natively, or under `qemu-x86_64 -cpu MODEL`.
#[derive(Clone, Copy)]
enum Cpu {
    Host,
    Emulated(&'static Model),
}

type Env<'a> = &'a [(&'a str, &'a str)];

impl Cpu {
    fn run(self, args: &[&str]) -> Out {
        self.run_env(&[], args)
    }

    /// Run vmcrypt with the variables `env` set; emulated as [`Model::run`] runs it, with
    /// QEMU's TCG warnings left out of stderr.
    fn run_env(self, env: Env, args: &[&str]) -> Out {
        match self {
            Cpu::Host => {
                let cmd = std::process::Command::new(VMCRYPT)
                    .envs(env.iter().copied())
                    .args(args)
                    .output();
                out_of(env, "", args, cmd.expect("running vmcrypt"))
            }
            Cpu::Emulated(m) => {
                let mut out = emulate(m, env, args);
                out.stderr = without_tcg_warnings(&out.stderr);
                out
            }
        }
    }
}

/// `qemu-x86_64 -cpu MODEL vmcrypt ARGS` as an [`Out`], QEMU's warnings included.
fn emulate(m: &Model, env: Env, args: &[&str]) -> Out {
    let out = m.run(env, VMCRYPT, args);
    out_of(env, &format!("{QEMU_USER} -cpu {} ", m.name), args, out)
}

/// The [`Out`] of a run of vmcrypt with `env`, after `prefix` (the emulator).
fn out_of(env: Env, prefix: &str, args: &[&str], out: std::process::Output) -> Out {
    let env: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    Out {
        cmdline: format!("{env}{prefix}vmcrypt {}", args.join(" ")),
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A short `vmcrypt bench -c aes-xts`: its last line names the CPU and the kernels.
const BENCH: [&str; 5] = ["bench", "-c", "aes-xts", "--seconds", "0.01"];

fn kernel_line(out: &Out) -> String {
    let text = out.stdout_str();
    let line = text.lines().find(|l| l.starts_with("# CPU: "));
    line.unwrap_or_else(|| panic!("no CPU line\n{}", out.describe()))
        .to_string()
}

/// The model is what the binary sees, and its kernels are the ones its features call
/// for; the features the table says TCG lacks are the ones QEMU reports dropping.
fn check_choice(m: &'static Model) {
    let raw = emulate(m, &[], &BENCH).ok();
    m.tcg_dropped(&raw.stderr);
    let line = kernel_line(&raw);
    let want = format!(
        "# CPU: {}; AES kernel (XTS, CBC decryption): {}; SHA-256 kernel (checksums): {}",
        m.brand,
        m.expected_aes(),
        m.expected_sha256()
    );
    assert_eq!(line, want, "-cpu {}", m.name);
    eprintln!("-cpu {}: {line}", m.name);
}

/// Forcing each AES kernel: one the model runs is used, one it lacks is refused naming
/// the variable and the kernel; a refused read of an image writes nothing.
fn check_forcing(m: &'static Model, sc: &Scratch, luks2: &str) {
    let cpu = Cpu::Emulated(m);
    for k in AES_KERNELS {
        let forced = [(AES_ENV, k)];
        if m.runs_aes(k) {
            let line = kernel_line(&cpu.run_env(&forced, &BENCH).ok());
            assert!(line.contains(&format!("decryption): {k};")), "{line}");
        } else {
            let refusal = format!("{AES_ENV}={k}: AES kernel {k} is not supported by this CPU");
            cpu.run_env(&forced, &BENCH).failed().stderr_has(&refusal);
        }
    }
    let k = "vaes-avx2";
    assert!(!m.runs_aes(k), "{}: TCG has no VPCLMULQDQ", m.name);
    let out = sc.p("forced.raw");
    let secret = sc.secret("s0", "key");
    let opts = luks_opts("s0", luks2, None);
    #[rustfmt::skip]
    let args = ["convert", "--object", &secret, "--image-opts", &opts, "-O", "raw", &out];
    cpu.run_env(&[(AES_ENV, k)], &args)
        .failed()
        .stderr_has(&format!("{AES_ENV}={k}: AES kernel {k} is not supported"));
    assert!(
        !sc.path("forced.raw").exists(),
        "a refused read wrote {out}"
    );
}

/// One kind of test image: a LUKS header `luks format` writes with these flags, or a
/// qcow2 image with LUKS encryption.
#[derive(Clone, Copy)]
enum Kind {
    Luks(&'static [&'static str]),
    Qcow2,
}

/// Each image holds this much data (after a 2 MiB header for LUKS).
const DATA: usize = 2 << 20;
const LUKS_OFFSET_SECTORS: &str = "4096";

#[rustfmt::skip]
const IMAGES: [(&str, Kind); 4] = [
    (
        "luks2-xts256-s512",
        Kind::Luks(&[
            "--type", "luks2", "-c", "aes-xts-plain64", "-s", "256", "--sector-size", "512",
            "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
        ]),
    ),
    (
        "luks2-xts512-s4096",
        Kind::Luks(&[
            "--type", "luks2", "-c", "aes-xts-plain64", "-s", "512", "--sector-size", "4096",
            "--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32",
            "--pbkdf-parallel", "1",
        ]),
    ),
    (
        "luks1-cbc-essiv",
        Kind::Luks(&[
            "--type", "luks1", "-c", "aes-cbc-essiv:sha256", "-s", "256",
            "--pbkdf-force-iterations", "1000",
        ]),
    ),
    ("qcow2-luks", Kind::Qcow2),
];

/// The `--image-opts` of image `img` of `kind`, keyed by secret `s0`.
fn image_opts(kind: Kind, img: &str) -> String {
    match kind {
        Kind::Luks(_) => luks_opts("s0", img, None),
        Kind::Qcow2 => format!("driver=qcow2,encrypt.key-secret=s0,file.filename={img}"),
    }
}

/// Make image `name` of `kind` on `cpu` holding `data` (written there too).
fn make_image(cpu: Cpu, sc: &Scratch, kind: Kind, name: &str, data: &[u8]) {
    let (secret, img, key) = (sc.secret("s0", "key"), sc.p(name), sc.p("key"));
    let raw = format!("{name}.in");
    let raw = sc.write(&raw, data);
    let Kind::Luks(flags) = kind else {
        let o = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10";
        #[rustfmt::skip]
        cpu.run(&["convert", "--object", &secret, "-f", "raw", &raw, "-O", "qcow2", "-o", o, &img]).ok();
        return;
    };
    sc.sparse(name, 2 * DATA as u64);
    let mut args = vec!["luks", "format", "-q", "--offset", LUKS_OFFSET_SECTORS];
    args.extend_from_slice(flags);
    args.extend([img.as_str(), &key]);
    cpu.run(&args).ok();
    let opts = image_opts(kind, &img);
    #[rustfmt::skip]
    cpu.run(&["convert", "-n", "--object", &secret, "-f", "raw", &raw, "--target-image-opts", &opts]).ok();
}

/// Read image `name` of `kind` on `cpu` and compare it with `data`.
fn check_image(cpu: Cpu, sc: &Scratch, kind: Kind, name: &str, data: &[u8]) {
    let (secret, out) = (sc.secret("s0", "key"), sc.p(&format!("{name}.out")));
    let opts = image_opts(kind, &sc.p(name));
    #[rustfmt::skip]
    cpu.run(&["convert", "--object", &secret, "--image-opts", &opts, "-O", "raw", &out]).ok();
    assert_same_bytes(name, &read(std::path::Path::new(&out)), data);
}

/// A secret stored (sealed with XChaCha20-Poly1305, whose crates pick AVX2 or SSE2 code
/// at run time) on `maker` reads back on `reader`, in a store of its own at `store`.
fn check_secret_store(maker: Cpu, reader: Cpu, sc: &Scratch, store: &str) {
    const UUID: &str = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f";
    let xml = format!(
        "<secret ephemeral='no' private='no'>\n  <uuid>{UUID}</uuid>\n  \
         <usage type='volume'>\n    <volume>/images/{store}.img</volume>\n  </usage>\n</secret>\n"
    );
    let (xml, dir) = (
        sc.write(&format!("{store}.xml"), xml.as_bytes()),
        sc.p(store),
    );
    let env = [("VMCRYPT_SECRET_STORE", dir.as_str())];
    // Several ChaCha20 blocks and Poly1305 chunks, and a partial one.
    let value = plaintext(1024, store)[..1000].to_vec();
    let file = sc.write(&format!("{store}.value"), &value);
    maker.run_env(&env, &["secret", "define", &xml]).ok();
    #[rustfmt::skip]
    maker.run_env(&env, &["secret", "set-value", UUID, "--file", &file, "--plain"]).ok();
    let got = reader
        .run_env(&env, &["secret", "get-value", UUID, "--plain"])
        .ok();
    assert_same_bytes(store, &got.stdout, &value);
}

/// Everything this file checks for one model.
fn check_model(name: &str) {
    require_tool(QEMU_USER);
    let m = Model::named(name);
    let start = std::time::Instant::now();
    check_choice(m);
    let sc = Scratch::new();
    sc.write("key", PASS);
    for (image, kind) in IMAGES {
        for (maker, reader, dir) in [
            (Cpu::Emulated(m), Cpu::Host, "emulated-to-host"),
            (Cpu::Host, Cpu::Emulated(m), "host-to-emulated"),
        ] {
            let file = format!("{image}.{dir}");
            let data = plaintext(DATA, &format!("{}/{file}", m.name));
            make_image(maker, &sc, kind, &file, &data);
            check_image(reader, &sc, kind, &file, &data);
        }
    }
    let emulated = Cpu::Emulated(m);
    check_secret_store(emulated, Cpu::Host, &sc, "store-emulated-to-host");
    check_secret_store(Cpu::Host, emulated, &sc, "store-host-to-emulated");
    check_forcing(m, &sc, &sc.p("luks2-xts256-s512.host-to-emulated"));
    eprintln!("-cpu {}: done in {:.1?}", m.name, start.elapsed());
}

#[test]
fn epyc_rome_zen2_aesni_avx2_sha_ni_no_vaes() {
    check_model("EPYC-Rome");
}

#[test]
fn epyc_milan_zen3_falls_back_to_aesni_under_tcg() {
    check_model("EPYC-Milan-v2");
}

#[test]
fn haswell_aesni_avx2_no_sha_ni() {
    check_model("Haswell");
}

#[test]
fn westmere_aesni_no_avx() {
    check_model("Westmere");
}

#[test]
fn qemu64_no_aesni_runs_the_soft_kernel() {
    check_model("qemu64");
}
