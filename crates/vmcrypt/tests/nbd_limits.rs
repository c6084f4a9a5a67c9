//! `vmcrypt serve` limits seen from outside: a client beyond `--shared` waits for a
//! slot as with qemu-nbd, and a ~10 s soak on a Unix socket: 64 clients, one greedy (queues
//! 4 MiB reads and never reads the replies), the others verified small writes and
//! reads. The others keep completing with bounded latency, the server's memory stays
//! within the `--max-inflight` budget, and its RSS returns near idle afterwards.
mod common;
mod nbd_support;

use common::*;
use nbd_support::Served;
use nbd_support::raw::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BUDGET_MIB: u64 = 64;
const CLIENTS: u64 = 64;
const SOAK: Duration = Duration::from_secs(10);

fn url(sock: &str) -> String {
    format!("nbd+unix:///?socket={sock}")
}

/// A status field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether something listens on the Unix socket `sock` (from the kernel's table, so
/// that no probe connection takes the one `--shared 1` slot).
fn listening(sock: &str) -> bool {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[3] == "00010000" && f[7..].join(" ") == sock
    })
}

/// Wait up to `limit` for `child` to exit; `None` while it still runs.
fn exited_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `--shared 1`, one client holds the slot while `nbdinfo --size` connects; after
/// 3 s the first leaves. Returns whether nbdinfo was still waiting then, and the size it
/// printed (`None`: it failed).
fn second_client_under_shared_1(tool: &str, persistent: bool) -> (bool, Option<String>) {
    let sc = Scratch::new();
    let file = sc.sparse("d.raw", MIB);
    let sock = sc.p("s.sock");
    let mut cmd = match tool {
        "qemu-nbd" => {
            let mut c = Command::new(require_tool("qemu-nbd"));
            c.args(["--shared=1", "-f", "raw", "-k", &sock]);
            if persistent {
                c.arg("-t");
            }
            c
        }
        _ => {
            let mut c = Command::new(VMCRYPT);
            c.args(["serve", "--shared", "1", "-f", "raw", "--socket", &sock]);
            if persistent {
                c.arg("--persistent");
            }
            c
        }
    };
    let server = cmd.arg(&file).stdin(Stdio::null()).stdout(Stdio::null());
    let mut server = Killed(
        server
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the server"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listening(&sock) {
        assert!(Instant::now() < deadline, "{tool} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = RawClient::open(&sock, "");
    let mut second = Killed(
        Command::new(require_tool("nbdinfo"))
            .args(["--size", &url(&sock)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nbdinfo"),
    );
    let waited = exited_within(&mut second.0, Duration::from_secs(3)).is_none();
    drop(first);
    let st = exited_within(&mut second.0, Duration::from_secs(15));
    let mut out = String::new();
    if let Some(o) = second.0.stdout.as_mut() {
        std::io::Read::read_to_string(o, &mut out).unwrap();
    }
    let served = st
        .is_some_and(|s| s.success())
        .then(|| out.trim().to_string());
    let _ = server.0.kill();
    (waited, served)
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client beyond `--shared N` waits, ungreeted, for as long as it takes one to leave
/// and is then served, as with qemu-nbd 10 (measured here on both); without
/// `--persistent` (qemu-nbd's `-t`) the server exits when its client leaves and the
/// waiting client is dropped, also as with qemu-nbd.
#[test]
fn a_client_beyond_shared_waits_like_qemu_nbd() {
    for persistent in [true, false] {
        let qemu = second_client_under_shared_1("qemu-nbd", persistent);
        let ours = second_client_under_shared_1("vmcrypt", persistent);
        let want = (true, persistent.then(|| MIB.to_string()));
        assert_eq!(qemu, want, "qemu-nbd, persistent {persistent}");
        assert_eq!(ours, want, "vmcrypt serve, persistent {persistent}");
    }
}

/// One well-behaved client: write a 4 KiB pattern to its own block, read it back,
/// until `until`; returns the round-trip latencies.
fn worker(sock: &str, id: u64, until: Instant) -> Vec<Duration> {
    let mut c = RawClient::open(sock, "");
    let mut lat = Vec::new();
    let mut round = 0u64;
    while Instant::now() < until {
        let fill = (id as u8) ^ (round as u8);
        let offset = id * 65536;
        let t0 = Instant::now();
        c.write(round * 2, offset, &[fill; 4096]);
        assert_eq!(c.reply(), Some((round * 2, 0)), "client {id} write");
        let back = c.read(round * 2 + 1, offset, 4096);
        lat.push(t0.elapsed());
        assert!(
            back.iter().all(|&b| b == fill),
            "client {id} read back other data"
        );
        round += 1;
    }
    lat
}

#[test]
fn soak_one_greedy_client_cannot_starve_63_others_or_grow_memory() {
    let sc = Scratch::new();
    sc.sparse("d.raw", 64 * MIB);
    let budget = format!("{BUDGET_MIB}M");
    let args = ["--max-inflight", &budget, "-f", "raw", &sc.p("d.raw")];
    let (server, sock) = Served::unix(&sc, &args);
    let pid = server.child.as_ref().unwrap().id();
    let idle = status_kib(pid, "VmRSS:");
    let mut greedy = RawClient::open(&sock, "");
    for cookie in 0..64 {
        greedy.request(0, CMD_READ, cookie, (cookie % 16) * 4 * MIB, 4 << 20);
    }
    let until = Instant::now() + SOAK;
    let workers: Vec<_> = (1..CLIENTS)
        .map(|id| {
            let sock = sock.clone();
            std::thread::spawn(move || worker(&sock, id, until))
        })
        .collect();
    let mut lat: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a client failed"))
        .collect();
    let peak = status_kib(pid, "VmHWM:");
    drop(greedy);
    lat.sort();
    assert!(lat.len() >= 63 * 10, "only {} round trips", lat.len());
    let p99 = lat[lat.len() * 99 / 100];
    assert!(p99 < Duration::from_secs(2), "p99 latency {p99:?}");
    // The budget plus the runtime, the other clients' buffers and allocator slack.
    let limit = idle + (BUDGET_MIB + 48) * 1024;
    assert!(
        peak < limit,
        "peak RSS {peak} KiB over {limit} KiB (idle {idle} KiB)"
    );
    let t0 = Instant::now();
    let settled = loop {
        let rss = status_kib(pid, "VmRSS:");
        if rss < idle + 24 * 1024 || t0.elapsed() > Duration::from_secs(5) {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "idle {idle} KiB, peak {peak} KiB, after {settled} KiB, {} round trips, p99 {p99:?}",
        lat.len()
    );
    assert!(
        settled < idle + 24 * 1024,
        "RSS {settled} KiB after the clients left (idle {idle} KiB)"
    );
    server.stop();
}

/// The scheduling policy of every thread of process `pid` (field 41 of its stat).
fn thread_policies(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("listing threads");
    tasks
        .map(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn serve_threads_run_under_sched_batch_unless_told_otherwise() {
    let sc = Scratch::new();
    sc.sparse("d.raw", MIB);
    for (extra, want) in [(None, 3), (Some("normal"), 0), (Some("batch"), 3)] {
        let mut args = vec!["-f", "raw"];
        if let Some(p) = extra {
            args.extend(["--sched", p]);
        }
        let img = sc.p("d.raw");
        args.push(&img);
        let (server, sock) = Served::unix(&sc, &args);
        // A request, so the blocking pool has started threads too.
        let mut c = RawClient::open(&sock, "");
        c.request(0, CMD_FLUSH, 1, 0, 0);
        assert_eq!(c.reply(), Some((1, 0)));
        let pid = server.child.as_ref().unwrap().id();
        let policies = thread_policies(pid);
        assert!(policies.len() > 1, "{policies:?}");
        assert!(
            policies.iter().all(|&p| p == want),
            "--sched {extra:?}: policies {policies:?}, want {want}"
        );
        drop(c);
        server.stop();
        std::fs::remove_file(&sock).ok();
    }
    let out = std::process::Command::new(VMCRYPT)
        .args(["serve", "--sched", "fifo", "-f", "raw", &sc.p("d.raw")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown scheduling policy 'fifo'"), "{err}");
}
