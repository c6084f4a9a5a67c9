//! Shared by the NBD interop tests: a `vmcrypt serve` child process that is stopped
//! with SIGTERM (and must then exit 0), or killed when a test panics.
#![allow(dead_code)]

use crate::common::{Scratch, VMCRYPT};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `vmcrypt serve`, killed when dropped (also when a test panics).
pub struct Served {
    pub child: Option<Child>,
    log: String,
}

impl Served {
    /// Start `vmcrypt serve ARGS` and wait until `ready` says it accepts connections.
    pub fn start(sc: &Scratch, args: &[&str], ready: impl Fn() -> bool) -> Served {
        let log = sc.p("serve.log");
        let err = std::fs::File::create(&log).expect("creating the server log");
        let mut child = Command::new(VMCRYPT)
            .arg("serve")
            .args(args)
            .env("VMCRYPT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("starting vmcrypt serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "vmcrypt serve exited early ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "vmcrypt serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Served {
            child: Some(child),
            log,
        }
    }

    /// Serve on a Unix socket `S` in the scratch dir; returns the server and the socket.
    pub fn unix(sc: &Scratch, args: &[&str]) -> (Served, String) {
        let sock = sc.p("nbd.sock");
        let mut all = vec!["--persistent", "--socket", &sock];
        all.extend_from_slice(args);
        let s = Served::start(sc, &all, || UnixStream::connect(&sock).is_ok());
        (s, sock)
    }

    /// SIGTERM, then wait for a clean exit (status 0) and return the log.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("server running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for the server") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vmcrypt serve did not exit on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "server exited with {status}:\n{log}");
        log
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free TCP port")
        .port()
}

pub mod raw;
