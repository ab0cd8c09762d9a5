//! Progress output: the libraries' events rendered as one line per host
//! and phase. On a terminal the lines update in place (indicatif);
//! otherwise each phase change is printed as a plain line, so logs and CI
//! output stay readable.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use promguard_core::{Event, HostName, Observer};

/// The progress display of one run.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    verbose: bool,
    lines: Arc<Mutex<HashMap<HostName, Arc<HostLine>>>>,
}

/// The progress line of one host.
pub struct HostLine {
    name: String,
    bar: Option<ProgressBar>,
    verbose: bool,
}

impl Progress {
    /// Live lines on a terminal, plain lines elsewhere; `verbose` also shows
    /// details (what runs on which host).
    pub fn new(verbose: bool) -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            multi,
            verbose,
            lines: Arc::default(),
        }
    }

    /// The line of `host`, made when the host is first mentioned.
    fn line(&self, host: &HostName) -> Arc<HostLine> {
        let mut lines = self.lines.lock().expect("no panics while drawing");
        Arc::clone(
            lines
                .entry(host.clone())
                .or_insert_with(|| Arc::new(self.host(host.as_str()))),
        )
    }

    /// A line for `name`.
    pub fn host(&self, name: &str) -> HostLine {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<24} {wide_msg}")
                    .expect("valid template"),
            );
            bar.set_prefix(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        HostLine {
            name: name.to_owned(),
            bar,
            verbose: self.verbose,
        }
    }

    /// Runs `f` with the live lines hidden, so a question `f` asks at the
    /// terminal is not drawn over.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.multi {
            Some(m) => m.suspend(f),
            None => f(),
        }
    }

    /// A message not tied to one host.
    pub fn note(&self, message: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(message);
            }
            None => eprintln!("{message}"),
        }
    }
}

impl HostLine {
    /// The host enters a new phase.
    pub fn phase(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_owned()),
            None => eprintln!("{}: {message}", self.name),
        }
    }

    /// A detail, shown only with `-v`.
    pub fn detail(&self, message: &str) {
        if !self.verbose {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(format!("  {}: {message}", self.name)),
            None => eprintln!("  {}: {message}", self.name),
        }
    }

    /// The host is done (successfully or not); the line stays with `message`.
    pub fn finish(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_owned()),
            None => eprintln!("{}: {message}", self.name),
        }
    }
}

fn names(hosts: &[HostName]) -> String {
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Observer for Progress {
    fn on_event(&self, event: &Event) {
        match event {
            Event::Adopting { hosts } => self.note(&format!(
                "Adopting {} host(s) an interrupted run created: {}",
                hosts.len(),
                names(hosts)
            )),
            Event::Creating { hosts, provider } => self.note(&format!(
                "Creating {} host(s) on the {provider} provider",
                hosts.len()
            )),
            Event::Step { host, step } => self.line(host).phase(step.as_str()),
            Event::Changed { host, what } => self.line(host).detail(what),
            Event::Finished { host, outcome } => self.line(host).finish(&outcome.to_string()),
            Event::Destroying { hosts } => {
                self.note(&format!("Destroying {} removed host(s)", hosts.len()))
            }
            Event::Draining { hosts, at_most } => self.note(&format!(
                "Interrupted: letting {hosts} host(s) finish the step in progress (at most {} s)",
                at_most.as_secs()
            )),
            Event::Warning { message } => self.note(message),
            // Events a newer library reports are not shown.
            _ => {}
        }
    }
}
