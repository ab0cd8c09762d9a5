//! A host's init process, identified by PID *and* start time so that a PID
//! the kernel has since given to another process is never signalled.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// PID 1 of a host's PID namespace, as seen from the root namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InitProcess {
    /// PID in the root PID namespace.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says about a process: its state letter and start
/// time.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces
    // or parentheses itself, so fields are counted after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); start time is field 22.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start_time))
}

impl InitProcess {
    /// Identifies the running process `pid`.
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| Self { pid, start_time })
    }

    /// Whether this very process still runs (a zombie counts as ended: its
    /// namespace's other processes are gone by then).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Sends SIGKILL if this is still the same process. Killing PID 1 of a
    /// PID namespace makes the kernel kill every other process in it.
    pub fn kill(&self) {
        if self.is_alive() {
            // It may end between the check and the signal; ESRCH is fine.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }

    /// Waits until the process has ended, at most `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The children of `pid` (needs `CONFIG_PROC_CHILDREN`, which Debian
/// kernels have).
pub(crate) fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|text| {
            text.split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_pid_is_not_ours() {
        let me = InitProcess::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = InitProcess {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
        // `kill` on a process that is not ours must not signal it: if it
        // did, this test process would die here.
        other.kill();
    }

    #[test]
    fn kill_and_wait() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let process = InitProcess::of(child.id() as i32).unwrap();
        process.kill();
        // The zombie counts as gone even before it is reaped.
        assert!(process.wait_gone(Duration::from_secs(5)));
        child.wait().unwrap();
    }
}
