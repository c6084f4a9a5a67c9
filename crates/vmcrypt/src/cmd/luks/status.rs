//! `vmcrypt luks status NAME`: cryptsetup's status of a device `luks open` opened, plus
//! its socket, its daemon and a reencryption run's progress (asked of the daemon);
//! exit 0 active, 4 inactive (as cryptsetup).
use vmcrypt_block::jobs::luks::active::{
    RunDir, Status, live_reencryption, render_reencryption, status,
};
use vmcrypt_error::Result;

/// A command that takes only a name.
#[derive(clap::Args, Debug)]
pub struct NameArgs {
    /// The name given to `vmcrypt luks open`
    pub name: String,
    /// Directory of the sockets and state files (default $VMCRYPT_RUN_DIR or /run/vmcrypt)
    #[arg(long = "run-dir", value_name = "DIR")]
    pub run_dir: Option<String>,
}

pub fn run(a: &NameArgs) -> Result<u8> {
    let dir = RunDir::new(a.run_dir.as_deref());
    Ok(match status(&dir, &a.name)? {
        Status::Active(mut info) => {
            let run = live_reencryption(&dir, &a.name, &mut info);
            out!("{}", info.render());
            if let Some(line) = run.as_ref().and_then(render_reencryption) {
                out!("{line}");
            }
            0
        }
        Status::Starting => {
            outln!("{} is active (still starting).", a.name);
            0
        }
        Status::Inactive { leftover } => {
            outln!("{} is inactive.", a.name);
            if let Some(left) = leftover {
                let pid = left.pid.map_or(String::new(), |p| format!(" (pid {p})"));
                eprintln!(
                    "Its daemon{pid} died and left files behind; `vmcrypt luks close {}` removes them.",
                    a.name
                );
            }
            4
        }
    })
}
