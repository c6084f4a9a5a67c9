//! `vmcrypt luks close NAME`: stop the daemon `luks open` started (it finishes the
//! requests in flight and flushes), or clean up after one that died; exit 4 when NAME
//! is not active, as cryptsetup does.
use super::status::NameArgs;
use vmcrypt_block::jobs::luks::active::{CLOSE_TIMEOUT, Closed, RunDir, close};
use vmcrypt_error::Result;

pub fn run(a: &NameArgs) -> Result<u8> {
    let dir = RunDir::new(a.run_dir.as_deref());
    Ok(match close(&dir, &a.name, CLOSE_TIMEOUT)? {
        Closed::Stopped { .. } => 0,
        Closed::Stale(left) => {
            let pid = left.pid.map_or(String::new(), |p| format!(" (pid {p})"));
            eprintln!(
                "{} was not active: its daemon{pid} had died; removed the files it left",
                a.name
            );
            0
        }
        Closed::NotActive => {
            eprintln!("vmcrypt: Device {} is not active.", a.name);
            4
        }
    })
}
