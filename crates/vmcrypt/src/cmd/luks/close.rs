//! `vmcrypt luks close NAME`: stop the daemon `luks open` started (it finishes the
//! requests in flight and flushes), or clean up after one that died; exit 4 when NAME
//! is not active, as cryptsetup does. While NBD clients are connected it refuses (exit
//! 5, as cryptsetup refuses to close a mapping in use) unless `--force`.
use super::status::NameArgs;
use vmcrypt_block::jobs::luks::active::{CLOSE_TIMEOUT, Closed, RunDir, close, refuse_if_in_use};
use vmcrypt_error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    name: NameArgs,
    /// Close even while clients are connected (they are disconnected)
    #[arg(long = "force")]
    force: bool,
}

pub fn run(args: &Args) -> Result<u8> {
    let a = &args.name;
    let dir = RunDir::new(a.run_dir.as_deref());
    if !args.force {
        refuse_if_in_use(&dir, &a.name)?;
    }
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
