//! Progress of a run as typed events: the workflows of `promguard-cloud`
//! and `promguard-remote` report what they do to an [`Observer`] the caller
//! provides, and the caller renders them (the CLI's progress lines, a log,
//! a test's [`EventLog`]). Events carry no secrets.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::names::HostName;

/// Something a run did or is about to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Hosts an interrupted run created (after recording their keys) are
    /// taken into the deployment.
    Adopting {
        /// The hosts.
        hosts: Vec<HostName>,
    },
    /// The provider is asked for new hosts.
    Creating {
        /// The hosts.
        hosts: Vec<HostName>,
        /// The provider's name, for messages.
        provider: &'static str,
    },
    /// A host enters a step.
    Step {
        /// The host.
        host: HostName,
        /// The step.
        step: Step,
    },
    /// A host changed something: a file written, an action run.
    Changed {
        /// The host.
        host: HostName,
        /// What changed (a path or an action), never content.
        what: String,
    },
    /// A host is done with the workflow that reported it.
    Finished {
        /// The host.
        host: HostName,
        /// How it ended.
        outcome: Outcome,
    },
    /// Hosts removed from the config are destroyed (or, for existing
    /// hosts, forgotten).
    Destroying {
        /// The hosts.
        hosts: Vec<HostName>,
    },
    /// The run was cancelled; hosts in a step that must not be cut short
    /// are given time to finish it.
    Draining {
        /// How many hosts are still busy.
        hosts: usize,
        /// How long they are waited for at most.
        at_most: Duration,
    },
    /// Something went wrong that does not stop the run.
    Warning {
        /// What happened and what the run does instead.
        message: String,
    },
}

/// A step of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Queued behind the concurrency limit.
    Waiting,
    /// Opening the SSH connection (TCP, key exchange, login).
    Connecting,
    /// Replacing the SSH host key a provider injected.
    ReplacingHostKey,
    /// Running the recipe.
    Converging,
    /// Asking Prometheus whether every target is up.
    Verifying,
    /// Reading the host's state (`status`).
    Reading,
    /// Removing what PromGuard put on a host it did not create.
    Leaving,
}

impl Step {
    /// How progress output names the step.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Waiting => "waiting",
            Step::Connecting => "connecting",
            Step::ReplacingHostKey => "replacing the injected SSH host key",
            Step::Converging => "converging",
            Step::Verifying => "verifying targets",
            Step::Reading => "reading",
            Step::Leaving => "removing PromGuard",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a host's part of a workflow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Converged already: nothing was written or run.
    Unchanged,
    /// Converged with this many changes.
    Converged {
        /// Files written plus actions run.
        changes: usize,
    },
    /// The injected SSH host key was replaced.
    HostKeyReplaced,
    /// Replacing the injected SSH host key failed.
    HostKeyNotReplaced,
    /// Every target of the monitor is up.
    Verified,
    /// Not every target came up in time.
    VerificationFailed,
    /// The host's step failed (the error says why).
    Failed,
    /// The host's state was read.
    Read,
    /// PromGuard was removed from a host it did not create; the host stays.
    Left,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Unchanged => f.write_str("unchanged"),
            Outcome::Converged { changes } => write!(f, "converged ({changes} change(s))"),
            Outcome::Left => f.write_str("PromGuard removed (the host stays)"),
            Outcome::HostKeyReplaced => f.write_str("SSH host key replaced"),
            Outcome::HostKeyNotReplaced => f.write_str("SSH host key not replaced"),
            Outcome::Verified => f.write_str("every target is up"),
            Outcome::VerificationFailed => f.write_str("verification failed"),
            Outcome::Failed => f.write_str("failed"),
            Outcome::Read => f.write_str("read"),
        }
    }
}

/// Receives the events of a run. Called from many threads at once, and
/// from blocking threads: keep it quick.
pub trait Observer: Send + Sync {
    /// One event.
    fn on_event(&self, event: &Event);
}

/// Ignores every event.
impl Observer for () {
    fn on_event(&self, _event: &Event) {}
}

/// Keeps every event, for tests and for callers that render afterwards.
#[derive(Debug, Default)]
pub struct EventLog(Mutex<Vec<Event>>);

impl EventLog {
    /// The events so far, in the order they arrived.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().expect("no panics while logging").clone()
    }
}

impl Observer for EventLog {
    fn on_event(&self, event: &Event) {
        self.0
            .lock()
            .expect("no panics while logging")
            .push(event.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_outcomes_read_as_the_progress_lines_say() {
        assert_eq!(Step::Converging.to_string(), "converging");
        assert_eq!(Step::Verifying.to_string(), "verifying targets");
        assert_eq!(
            Outcome::Converged { changes: 3 }.to_string(),
            "converged (3 change(s))"
        );
        let log = EventLog::default();
        let host = HostName::new("promguard-node-1").unwrap();
        log.on_event(&Event::Step {
            host: host.clone(),
            step: Step::Connecting,
        });
        assert_eq!(
            log.events(),
            [Event::Step {
                host,
                step: Step::Connecting
            }]
        );
    }
}
