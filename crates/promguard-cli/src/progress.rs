//! Progress output: one line per host and phase. On a terminal the lines
//! update in place (indicatif); otherwise each phase change is printed as a
//! plain line, so logs and CI output stay readable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress display of one run.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    verbose: bool,
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
        Self { multi, verbose }
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
