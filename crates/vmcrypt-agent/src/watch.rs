//! What wakes the agent to look at its media: inotify on the watched directories (a
//! medium's directory created or removed) and the mount table (`/proc/self/mountinfo`
//! polls readable with POLLPRI when a filesystem is mounted or unmounted, which inotify
//! does not see). A thread sends [`Event::Rescan`] for each burst of changes; a watched
//! directory that does not exist yet is watched once it appears.
use crate::run::Event;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Start watching: the watches are in place when this returns (so nothing that happens
/// after it is missed), the thread reports from then on.
pub fn spawn(dirs: Vec<PathBuf>, tx: Sender<Event>) {
    let Ok(ino) = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK) else {
        return;
    };
    let mut watched = vec![false; dirs.len()];
    add_missing(&ino, &dirs, &mut watched);
    std::thread::spawn(move || watch(&ino, &dirs, &mut watched, &tx));
}

fn watch(ino: &OwnedFd, dirs: &[PathBuf], watched: &mut [bool], tx: &Sender<Event>) {
    let mountinfo = std::fs::File::open("/proc/self/mountinfo").ok();
    loop {
        add_missing(ino, dirs, watched);
        let mut fds = vec![PollFd::new(ino, PollFlags::IN)];
        if let Some(m) = &mountinfo {
            fds.push(PollFd::new(m, PollFlags::PRI));
        }
        let second = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let Ok(n) = poll(&mut fds, Some(&second)) else {
            return;
        };
        if n == 0 {
            continue;
        }
        // A burst (mkdir then mount) becomes one rescan.
        std::thread::sleep(Duration::from_millis(150));
        drain(ino, watched);
        if tx.send(Event::Rescan).is_err() {
            return;
        }
    }
}

fn add_missing(ino: &OwnedFd, dirs: &[PathBuf], watched: &mut [bool]) {
    let flags = WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ATTRIB;
    for (d, w) in dirs.iter().zip(watched.iter_mut()) {
        if !*w {
            *w = inotify::add_watch(ino, d, flags).is_ok();
        }
    }
}

/// Read all pending inotify events; a watched directory that went away is re-added
/// when it comes back.
fn drain(ino: &OwnedFd, watched: &mut [bool]) {
    let mut buf = [0u8; 4096];
    let mut gone = false;
    while let Ok(n) = rustix::io::read(ino, &mut buf) {
        if n == 0 {
            break;
        }
        gone |= any_ignored(&buf[..n]);
    }
    if gone {
        watched.iter_mut().for_each(|w| *w = false);
    }
}

/// Whether a read of `struct inotify_event`s (wd, mask, cookie, len, name[len]) holds an
/// IN_IGNORED, which follows the removal of a watched directory.
fn any_ignored(mut b: &[u8]) -> bool {
    const IN_IGNORED: u32 = 0x8000;
    let word = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    while b.len() >= 16 {
        if word(b, 4) & IN_IGNORED != 0 {
            return true;
        }
        let next = 16 + word(b, 12) as usize;
        b = b.get(next..).unwrap_or_default();
    }
    false
}
