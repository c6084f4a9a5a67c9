//! Online reencryption under `vmcrypt serve`: a cryptsetup LUKS2 image is put in
//! reencryption state (`--init-only`), served, and reencrypted inside the server
//! (`vmcrypt luks reencrypt --online CONTROL`) while qemu-io and a Rust NBD client
//! write (and read back) through the export the whole time. Afterwards every
//! acknowledged write reads back (the image is compared with a model of the writes)
//! and `cryptsetup luksDump` shows a new volume key digest and no requirement. A
//! server killed with SIGKILL mid-run is restarted and resumes; or cryptsetup
//! (`repair` + `reencrypt --resume-only`) finishes the run offline.
//!
//! Latency is printed, not asserted: the longest NBD write as the client saw it, and
//! the server's longest hotzone and longest request.
#[path = "nbd_support/raw.rs"]
mod raw;
mod reencrypt_support;

// Status lines and qemu-io errors arrive on stderr: every check reads both streams.
use reencrypt_support::{Rng, digest_of, dump_json, ok_both as ok, vmcrypt};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const DATA: u64 = 32 * MIB;
/// Writers own alternate stripes: qemu-io the even ones, the NBD client the odd ones.
const STRIPE: u64 = MIB;

trait StripeRange {
    fn range(&mut self, parity: u64, max_len: u64) -> (u64, u64);
}

impl StripeRange for Rng {
    /// A range inside a stripe of the given parity: 512-aligned offset and length.
    fn range(&mut self, parity: u64, max_len: u64) -> (u64, u64) {
        let stripes = DATA / STRIPE;
        let k = (self.next() % (stripes / 2)) * 2 + parity;
        let o = (self.next() % (STRIPE / 512)) * 512;
        let len = (1 + self.next() % (max_len / 512)) * 512;
        (k * STRIPE + o, len.min(STRIPE - o))
    }
}

type Model = Arc<Mutex<Vec<u8>>>;

struct Setup {
    dir: tempfile::TempDir,
    img: PathBuf,
    pw: PathBuf,
    model: Model,
    digest: String,
}

fn in_progress(img: &Path) -> bool {
    reencrypt_support::in_progress(img).0
}

/// A cryptsetup LUKS2 image with random data, put in reencryption state by vmcrypt.
fn setup(sector: u32, seed: u64) -> Setup {
    setup_init(sector, seed, &[])
}

/// Like [`setup`], with more `luks reencrypt --init-only` options.
fn setup_init(sector: u32, seed: u64, extra: &[&str]) -> Setup {
    let s = setup_plain(sector, seed);
    ok(vmcrypt()
        .args([
            "luks",
            "reencrypt",
            "--init-only",
            "--no-progress",
            "--key-file",
        ])
        .arg(&s.pw)
        .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
        .args(extra)
        .arg(&s.img));
    assert!(in_progress(&s.img), "--init-only left no reencryption");
    s
}

/// A cryptsetup LUKS2 image with random data, not in reencryption state.
fn setup_plain(sector: u32, seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (img, pw, plain) = (
        dir.path().join("d.img"),
        dir.path().join("pw"),
        dir.path().join("plain"),
    );
    std::fs::write(&pw, b"secret").unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 * MIB + DATA)
        .unwrap();
    ok(Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks2", "-q", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--sector-size"])
        .arg(sector.to_string())
        .arg("--key-file")
        .args([&pw, &img]));
    let mut rng = Rng(seed);
    let data: Vec<u8> = (0..DATA).map(|_| rng.next() as u8).collect();
    std::fs::write(&plain, &data).unwrap();
    let secret = format!("secret,id=s0,file={}", pw.display());
    let target = format!("driver=luks,key-secret=s0,file.filename={}", img.display());
    ok(vmcrypt()
        .args(["convert", "-q", "-n", "-f", "raw", "--target-image-opts"])
        .args(["--object", &secret, plain.to_str().unwrap(), &target]));
    let digest = digest_of(&img);
    Setup {
        dir,
        img,
        pw,
        model: Arc::new(Mutex::new(data)),
        digest,
    }
}

/// A `vmcrypt serve` process, or a `vmcrypt luks open` daemon (no child of ours).
struct Server {
    child: Option<Child>,
    nbd: PathBuf,
    /// What `luks reencrypt --online` is given to reach the run.
    ctl: Vec<String>,
    /// `luks open`: the run directory and name.
    opened: Option<(PathBuf, String)>,
}

fn serve(s: &Setup) -> Server {
    let (nbd, ctl) = (s.dir.path().join("nbd.sock"), s.dir.path().join("ctl.sock"));
    let _ = std::fs::remove_file(&nbd);
    let mut child = vmcrypt()
        .args(["serve", "--persistent", "--socket"])
        .arg(&nbd)
        .arg("--control")
        .arg(&ctl)
        .arg("--object")
        .arg(format!("secret,id=s0,file={}", s.pw.display()))
        .arg("--image-opts")
        .arg(format!(
            "driver=luks,key-secret=s0,file.filename={}",
            s.img.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting vmcrypt serve");
    let t = Instant::now();
    while !(nbd.exists() && std::os::unix::net::UnixStream::connect(&ctl).is_ok()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "vmcrypt serve exited at start"
        );
        assert!(t.elapsed() < Duration::from_secs(20), "server not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child: Some(child),
        nbd,
        ctl: vec![ctl.display().to_string()],
        opened: None,
    }
}

/// `vmcrypt luks open` of the image under `name`.
fn luks_open(s: &Setup, name: &str) -> Server {
    let run = s.dir.path().join("run");
    ok(vmcrypt()
        .args(["luks", "open", "--key-file"])
        .arg(&s.pw)
        .arg("--run-dir")
        .arg(&run)
        .arg(&s.img)
        .arg(name));
    Server {
        child: None,
        nbd: run.join(format!("{name}.sock")),
        ctl: vec![
            "--run-dir".into(),
            run.display().to_string(),
            name.to_string(),
        ],
        opened: Some((run, name.to_string())),
    }
}

/// A test that fails part-way must not leave its server running.
impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((run, name)) = self.opened.take() {
            let _ = vmcrypt()
                .args(["luks", "close", "--force", "--run-dir"])
                .arg(run)
                .arg(name)
                .output();
        }
    }
}

impl Server {
    fn kill9(mut self) {
        let mut child = self.child.take().expect("a serve process");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn stop(mut self) {
        if let Some((run, name)) = self.opened.take() {
            ok(vmcrypt()
                .args(["luks", "close", "--run-dir"])
                .arg(run)
                .arg(name));
            return;
        }
        let mut child = self.child.take().expect("a serve process");
        ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        assert!(child.wait().unwrap().success(), "serve exit status");
    }

    fn online(&self, extra: &[&str]) -> String {
        ok(vmcrypt()
            .args(["luks", "reencrypt", "--online", "--no-progress"])
            .args(extra)
            .args(&self.ctl))
    }

    /// `luks reencrypt --online` with `extra`, which must fail: its stderr.
    fn online_err(&self, extra: &[&str]) -> String {
        let out = vmcrypt()
            .args(["luks", "reencrypt", "--online", "--no-progress"])
            .args(extra)
            .args(&self.ctl)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// (state, done, total, summary line).
    fn status(&self) -> (String, u64, u64, String) {
        let out = self.online(&["--status"]);
        let line = out
            .lines()
            .find(|l| l.starts_with("Reencryption "))
            .unwrap_or_else(|| panic!("no status line in {out}"))
            .to_string();
        let w: Vec<&str> = line.split_whitespace().collect();
        let state = w[1].trim_end_matches(':').to_string();
        (state, w[2].parse().unwrap(), w[4].parse().unwrap(), line)
    }
}

/// Writers running against the export until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    batches: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    handles: Vec<JoinHandle<Duration>>,
}

impl Writers {
    fn start(srv: &Server, model: &Model, seed: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let (batches, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let q = {
            let (sock, model, stop, n) = (
                srv.nbd.clone(),
                model.clone(),
                stop.clone(),
                batches.clone(),
            );
            std::thread::spawn(move || qemu_io_writer(&sock, &model, &stop, &n, seed))
        };
        let r = {
            let (sock, model, stop, n) = (
                srv.nbd.clone(),
                model.clone(),
                stop.clone(),
                requests.clone(),
            );
            std::thread::spawn(move || nbd_writer(&sock, &model, &stop, &n, seed ^ 0xabcdef))
        };
        let w = Writers {
            stop,
            batches,
            requests,
            handles: vec![q, r],
        };
        let t = Instant::now();
        while w.counts().0 < 1 || w.counts().1 < 10 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "writers did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        w
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::SeqCst),
            self.requests.load(Ordering::SeqCst),
        )
    }

    /// Stop both; the longest NBD write the client saw.
    fn finish(self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("a writer failed"))
            .max()
            .unwrap()
    }
}

/// Batches of qemu-io writes into the even stripes, each read back right after.
fn qemu_io_writer(
    sock: &Path,
    model: &Model,
    stop: &AtomicBool,
    n: &AtomicU64,
    seed: u64,
) -> Duration {
    let mut rng = Rng(seed | 1);
    let url = format!("nbd+unix:///?socket={}", sock.display());
    while !stop.load(Ordering::SeqCst) {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw", &url]);
        let mut writes = vec![];
        for i in 0..8 {
            let (mut off, mut len) = rng.range(0, 64 << 10);
            if i % 4 == 3 {
                // Not even 512-byte aligned: read-modify-written in the server.
                (off, len) = (off + 7, len - 7 - rng.next() % 64);
            }
            let pat = (rng.next() % 255 + 1) as u8;
            cmd.arg("-c").arg(format!("write -P {pat} {off} {len}"));
            cmd.arg("-c").arg(format!("read -P {pat} {off} {len}"));
            writes.push((off, len, pat));
        }
        let out = ok(&mut cmd);
        assert!(
            !out.contains("fail") && !out.contains("error"),
            "qemu-io: {out}"
        );
        assert_eq!(
            out.matches("wrote ").count(),
            writes.len(),
            "qemu-io: {out}"
        );
        let mut m = model.lock().unwrap();
        for (off, len, pat) in writes {
            m[off as usize..(off + len) as usize].fill(pat);
        }
        drop(m);
        n.fetch_add(1, Ordering::SeqCst);
    }
    Duration::ZERO
}

/// Random writes into the odd stripes over a raw NBD connection, every fourth
/// followed by a read of the same range, and every third a 4096-byte block written as
/// its eight 512-byte pieces, all in flight at once; returns the longest write (send to
/// reply).
fn nbd_writer(sock: &Path, model: &Model, stop: &AtomicBool, n: &AtomicU64, seed: u64) -> Duration {
    let mut rng = Rng(seed | 1);
    let mut c = raw::RawClient::open(sock.to_str().unwrap(), "");
    let mut worst = Duration::ZERO;
    let mut cookie = 0;
    while !stop.load(Ordering::SeqCst) {
        if cookie % 3 == 0 {
            cookie = pieces_in_flight(&mut c, model, &mut rng, cookie);
        }
        let (off, len) = rng.range(1, 64 << 10);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        cookie += 1;
        let t = Instant::now();
        c.write(cookie, off, &data);
        assert_eq!(c.reply(), Some((cookie, 0)), "NBD write at {off}+{len}");
        worst = worst.max(t.elapsed());
        model.lock().unwrap()[off as usize..(off + len) as usize].copy_from_slice(&data);
        if cookie % 4 == 0 {
            cookie += 1;
            let back = c.read(cookie, off, len as u32);
            assert!(back == data, "NBD read-back at {off}+{len} differs");
        }
        n.fetch_add(1, Ordering::SeqCst);
    }
    worst
}

/// Eight 512-byte writes into the pieces of one 4096-byte block of an odd stripe, sent
/// in a shuffled order before any reply is read (the server runs them concurrently: on
/// 4096-byte sectors each is a read-modify-write of the same sector, and none may undo
/// another), then read back. Returns the last cookie used.
fn pieces_in_flight(c: &mut raw::RawClient, model: &Model, rng: &mut Rng, mut cookie: u64) -> u64 {
    let (off, _) = rng.range(1, 512);
    let block = off / 4096 * 4096;
    let mut order: Vec<u64> = (0..8).collect();
    for i in (1..8).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let data: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    let mut sent = std::collections::BTreeSet::new();
    for &k in &order {
        cookie += 1;
        let at = (k * 512) as usize;
        c.write(cookie, block + k * 512, &data[at..at + 512]);
        sent.insert(cookie);
    }
    for _ in 0..8 {
        let (got, err) = c.reply().expect("a reply to a piece write");
        assert_eq!(err, 0, "NBD piece write {got} failed");
        assert!(sent.remove(&got), "unexpected reply {got}");
    }
    model.lock().unwrap()[block as usize..block as usize + 4096].copy_from_slice(&data);
    cookie += 1;
    let back = c.read(cookie, block, 4096);
    assert!(
        back == data,
        "512-byte pieces at {block} written concurrently: one was lost"
    );
    cookie
}

/// No requirement left, a new digest, the plaintext equal to the model.
#[track_caller]
fn check(s: &Setup, what: &str) {
    let dump = ok(Command::new("cryptsetup").arg("luksDump").arg(&s.img));
    assert!(!dump.contains("Requirements"), "{what}: {dump}");
    assert!(!dump.contains("reencrypt"), "{what}: {dump}");
    assert_ne!(
        digest_of(&s.img),
        s.digest,
        "{what}: volume key not changed"
    );
    let out = s.dir.path().join("out");
    let secret = format!("secret,id=s0,file={}", s.pw.display());
    let src = format!(
        "driver=luks,key-secret=s0,file.filename={}",
        s.img.display()
    );
    ok(vmcrypt()
        .args([
            "convert",
            "-q",
            "-O",
            "raw",
            "--object",
            &secret,
            "--image-opts",
        ])
        .args([&src, out.to_str().unwrap()]));
    let got = std::fs::read(&out).unwrap();
    let want = s.model.lock().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: size");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{what}: plaintext differs from the model of the writes at byte {i}");
    }
}

/// Wait for the run to leave "running"; returns its last status line.
fn wait_done(srv: &Server) -> String {
    let t = Instant::now();
    loop {
        let (state, _, _, line) = srv.status();
        if state != "running" {
            return line;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "run never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn online_run_with_writers() {
    for (sector, seed) in [(4096u32, 11u64), (512, 12)] {
        let s = setup(sector, seed);
        online_run(&s, serve(&s), &format!("serve, sector {sector}"), &[]);
    }
}

#[test]
fn luks_open_daemon_online_run() {
    let s = setup(4096, 13);
    online_run(&s, luks_open(&s, "vol0"), "luks open", &[]);
}

/// What `luks reencrypt --online` needs to start a run in the server: the
/// passphrase (sent over the control socket) and the new key slot's KDF.
fn start_args<'a>(s: &'a Setup, resilience: &'a str) -> Vec<&'a str> {
    vec![
        "--key-file",
        s.pw.to_str().unwrap(),
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--resilience",
        resilience,
    ]
}

/// A served image that is not in reencryption state is put in it by the server and
/// reencrypted, writers running from before the start to after the end. Refused
/// first, with the image left as it was: a resume of nothing and a new sector size.
#[test]
fn run_started_while_served() {
    let s = setup_plain(512, 31);
    let srv = serve(&s);
    let (state, _, _, line) = srv.status();
    assert_eq!(state, "none", "{line}");
    for (bad, why) in [
        (
            vec!["--resume-only"],
            "no LUKS2 reencryption is in progress",
        ),
        (
            vec!["--sector-size", "1000"],
            "is not 512, 1024, 2048 or 4096",
        ),
    ] {
        let mut args = start_args(&s, "journal");
        args.extend(bad);
        let err = srv.online_err(&args);
        assert!(err.contains(why), "{err}");
        assert!(!in_progress(&s.img), "a refused start changed the header");
    }
    assert_eq!(digest_of(&s.img), s.digest);
    online_run(&s, srv, "started in serve", &start_args(&s, "journal"));
    let j = dump_json(&s.img);
    assert_eq!(j["segments"]["0"]["sector_size"], 512, "{j}");

    let s = setup_plain(4096, 32);
    let srv = luks_open(&s, "vol1");
    online_run(&s, srv, "started in luks open", &start_args(&s, "checksum"));
}

/// Writers throughout a run started with --detach (and `start` arguments) and
/// followed with --status.
fn online_run(s: &Setup, srv: Server, what: &str, start: &[&str]) {
    let seed = s.digest.len() as u64 + 5;
    {
        let w = Writers::start(&srv, &s.model, seed);
        let before = w.counts();
        let mut args = vec!["--hotzone-size", "64K", "--detach"];
        args.extend(start);
        srv.online(&args);
        let line = wait_done(&srv);
        let during = w.counts();
        assert!(line.contains("finished"), "{line}");
        assert!(line.contains("The old key is dropped."), "{what}: {line}");
        status_shows_the_live_header(s, &srv, what);
        std::thread::sleep(Duration::from_millis(200));
        let client_worst = w.finish();
        if let Some((run, name)) = &srv.opened {
            status_shows_the_header(s, run, name, what);
        }
        srv.stop();
        eprintln!(
            "{what}: {} qemu-io batches and {} NBD writes during the run; \
             longest NBD write seen by the client {:.1} ms; server: {line}",
            during.0 - before.0,
            during.1 - before.1,
            client_worst.as_secs_f64() * 1e3
        );
        assert!(
            during.0 - before.0 >= 2 && during.1 - before.1 >= 20,
            "writers barely overlapped the run: {before:?} -> {during:?}"
        );
        check(s, what);
    }
}

/// `luks reencrypt --online --status` of a finished run describes the header the
/// export serves now as cryptsetup reads it from the image: its cipher and sector size,
/// the new key's slot alone (not the old key's, not the `reencrypt` keyslot) and no
/// requirement; and no warning that the server's view is stale.
#[track_caller]
fn status_shows_the_live_header(s: &Setup, srv: &Server, what: &str) {
    let out = srv.online(&["--status"]);
    assert!(!out.contains("Warning"), "{what}: {out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("Header: "))
        .unwrap_or_else(|| panic!("{what}: no header line in {out}"));
    let hdr = dump_json(&s.img);
    let seg = &hdr["segments"]["0"];
    let slots: Vec<&str> = hdr["keyslots"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let want = format!(
        "Header: LUKS2, cipher {}, sector size {}, key slots {}, requirements none.",
        seg["encryption"].as_str().unwrap(),
        seg["sector_size"],
        slots.join(", ")
    );
    assert_eq!(line, want, "{what}: {hdr}");
}

/// `luks status` of a device whose run finished while it was open shows the finished
/// run and the encryption the header now has (not the one it was opened with): its
/// cipher, key size, sector size, and its one key slot (the new key's; the key slot
/// the device was opened with held the old key, which the finish removed).
#[track_caller]
fn status_shows_the_header(s: &Setup, run: &Path, name: &str, what: &str) {
    let st = ok(vmcrypt()
        .args(["luks", "status", "--run-dir"])
        .arg(run)
        .arg(name));
    let hdr = dump_json(&s.img);
    let seg = &hdr["segments"]["0"];
    let slots = hdr["keyslots"].as_object().unwrap();
    assert_eq!(slots.len(), 1, "{what}: {hdr}");
    let (slot, keyslot) = slots.iter().next().unwrap();
    assert_ne!(
        slot, "0",
        "{what}: the new key is in the old key's slot: {hdr}"
    );
    let keyslot_bits = keyslot["key_size"].as_u64().unwrap() * 8;
    for want in [
        format!("cipher:  {}", seg["encryption"].as_str().unwrap()),
        format!("keysize: {keyslot_bits} bits"),
        format!("key slot: {slot}"),
        format!("sector size:  {}", seg["sector_size"]),
        "reencryption: finished".to_string(),
    ] {
        assert!(st.contains(&want), "{what}: status lacks {want:?}:\n{st}");
    }
}

/// The image's data is in `sector`-byte sectors, as cryptsetup reads the header, and
/// sampled sectors decrypt to the model with the volume key cryptsetup reveals and
/// OpenSSL's AES-XTS (after [`check`], which decrypts it all with vmcrypt).
#[track_caller]
fn check_sector(s: &Setup, what: &str, sector: u32) {
    let j = dump_json(&s.img);
    assert_eq!(j["segments"]["0"]["sector_size"], sector, "{what}: {j}");
    let dump = ok(Command::new("cryptsetup").arg("luksDump").arg(&s.img));
    assert!(
        dump.contains(&format!("sector: {sector} [bytes]")),
        "{what}: {dump}"
    );
    let want = s.model.lock().unwrap();
    let n = reencrypt_support::check_with_cryptsetup_key(&s.img, &s.pw, &want, &mut Rng(7), 24);
    eprintln!("{what}: {n} sectors of {sector} bytes decrypted by openssl with cryptsetup's key");
}

/// A new sector size, both ways, set by a run started in the server (`serve`: 512 ->
/// 4096 with checksum; `luks open`: 4096 -> 512 with journal), writers running from
/// before the start to after the end: 512-byte writes that are not 4096-aligned, writes
/// not even 512-aligned, and the eight 512-byte pieces of one block in flight at once.
/// While part of the image is (or may become) in 4096-byte sectors the export serves
/// them by read-modify-write, and every acknowledged write reads back.
#[test]
fn sector_size_change_started_while_served() {
    for (from, to, seed, daemon, resilience) in [
        (512u32, 4096u32, 41u64, false, "checksum"),
        (4096, 512, 42, true, "journal"),
    ] {
        let s = setup_plain(from, seed);
        let srv = if daemon {
            luks_open(&s, "vol2")
        } else {
            serve(&s)
        };
        let what = format!("{from} -> {to} started while served (daemon: {daemon})");
        let to_s = to.to_string();
        let mut args = start_args(&s, resilience);
        args.extend(["--sector-size", to_s.as_str()]);
        online_run(&s, srv, &what, &args);
        check_sector(&s, &what, to);
    }
}

/// A sector size change put in the header offline (`--init-only --sector-size`),
/// resumed by the server with writers throughout, both ways.
#[test]
fn sector_size_change_resumed_online() {
    for (from, to, seed, daemon) in [(512u32, 4096u32, 43u64, true), (4096, 512, 44, false)] {
        let to_s = to.to_string();
        let s = setup_init(from, seed, &["--sector-size", &to_s]);
        let srv = if daemon {
            luks_open(&s, "vol3")
        } else {
            serve(&s)
        };
        let what = format!("{from} -> {to} from --init-only, resumed online (daemon: {daemon})");
        online_run(&s, srv, &what, &[]);
        check_sector(&s, &what, to);
    }
}

/// A data size that is not a multiple of the new sector size is refused before
/// anything is written; the server goes on without a run.
#[test]
fn sector_size_change_misaligned_refused() {
    let s = setup_plain(512, 45);
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.img)
        .unwrap();
    img.set_len(16 * MIB + DATA + 512).unwrap();
    let srv = serve(&s);
    let err =
        srv.online_err(&[&start_args(&s, "journal")[..], &["--sector-size", "4096"]].concat());
    assert!(err.contains("not a multiple of 4096 bytes"), "{err}");
    assert!(!in_progress(&s.img), "a refused start changed the header");
    assert_eq!(digest_of(&s.img), s.digest);
    assert_eq!(srv.status().0, "none");
    srv.stop();
}

/// Start a run with writers, kill -9 the server after a quarter; returns the
/// progress seen last before the kill.
fn run_and_kill(s: &Setup, seed: u64) -> u64 {
    let srv = serve(s);
    let w = Writers::start(&srv, &s.model, seed);
    srv.online(&["--hotzone-size", "64K", "--detach"]);
    let t = Instant::now();
    let seen = loop {
        let (state, done, total, line) = srv.status();
        assert_eq!(state, "running", "{line}");
        if done > total / 4 {
            break done;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no progress: {line}");
        std::thread::sleep(Duration::from_millis(5));
    };
    // Writers stop first: a write in flight at the kill would be unacknowledged.
    w.finish();
    srv.kill9();
    assert!(in_progress(&s.img), "the run finished before the kill");
    seen
}

#[test]
fn killed_server_restarts_and_resumes() {
    let s = setup(4096, 21);
    restart_and_resume(&s, 21, "server killed, restarted, resumed");
}

/// Kill -9 the server of a run a quarter in, start it again (the progress is kept) and
/// resume the run online.
fn restart_and_resume(s: &Setup, seed: u64, what: &str) {
    let seen = run_and_kill(s, seed);
    let srv = serve(s);
    let (state, done, _, line) = srv.status();
    assert_eq!(state, "idle", "{line}");
    assert!(
        done >= seen,
        "progress lost over the restart: {seen} -> {line}"
    );
    let w = Writers::start(&srv, &s.model, seed + 1);
    let out = srv.online(&["--hotzone-size", "64K"]);
    assert!(out.contains("Reencryption finished"), "{out}");
    w.finish();
    srv.stop();
    check(s, what);
}

#[test]
fn killed_server_cryptsetup_finishes() {
    let s = setup(4096, 31);
    cryptsetup_finishes(&s, 31, "server killed, cryptsetup --resume-only");
}

/// A sector size change killed with the server a quarter in (writers throughout):
/// 512 -> 4096 restarted and resumed online, 4096 -> 512 finished by cryptsetup.
#[test]
fn sector_size_change_killed_server() {
    let s = setup_init(512, 51, &["--sector-size", "4096"]);
    restart_and_resume(&s, 51, "512 -> 4096 killed, resumed online");
    check_sector(&s, "512 -> 4096 killed, resumed online", 4096);
    let s = setup_init(4096, 52, &["--sector-size", "512"]);
    cryptsetup_finishes(&s, 52, "4096 -> 512 killed, cryptsetup");
    check_sector(&s, "4096 -> 512 killed, cryptsetup", 512);
}

/// Kill -9 the server of a run a quarter in; `cryptsetup repair` (after an
/// interrupted hotzone) and `reencrypt --resume-only` finish it.
fn cryptsetup_finishes(s: &Setup, seed: u64, what: &str) {
    run_and_kill(s, seed);
    let j = dump_json(&s.img);
    let hot = j["segments"].as_object().unwrap().values().any(|g| {
        g["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "in-reencryption"))
    });
    if hot {
        ok(Command::new("cryptsetup")
            .args(["repair", "-q", "--key-file"])
            .args([&s.pw, &s.img]));
    }
    ok(Command::new("cryptsetup")
        .args([
            "reencrypt",
            "--force-offline-reencrypt",
            "-q",
            "--resume-only",
        ])
        .arg("--key-file")
        .args([&s.pw, &s.img]));
    check(s, what);
}
