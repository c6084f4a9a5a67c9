//! Running the agent's helper programs (virsh, VM start/stop commands, prompts) with a
//! deadline, so a hung helper cannot stall the agent forever. Programs run without a
//! shell, with stdin closed; what they print on stderr is kept (the last line) for the
//! error message.
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use vmcrypt_error::{Error, Result, bail};

/// Wait for `child` up to `limit`; kill it after that.
pub fn wait_for(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child
            .try_wait()
            .map_err(|e| Error::io(e, "waiting for a helper"))?
        {
            return Ok(s);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                Io,
                "a helper did not finish within {} s and was killed",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a finished program printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `argv` to completion (at most `limit`).
pub fn run(argv: &[String], limit: Duration) -> Result<Output> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| Error::usage("an empty command"))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(e, format!("starting '{prog}'")))?;
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = wait_for(&mut child, limit)?;
    let take = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: take(out),
        stderr: take(err),
    })
}

/// Run `argv` and fail with its last stderr line unless it exits 0.
pub fn run_ok(argv: &[String], limit: Duration) -> Result<Output> {
    let out = run(argv, limit)?;
    if !out.status.success() {
        let why = out
            .stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        bail!(Io, "'{}' failed ({}): {why}", argv.join(" "), out.status);
    }
    Ok(out)
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = (&mut r).take(1 << 20).read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}
