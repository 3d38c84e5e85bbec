//! Progress that reads well everywhere: a bar in a terminal, a plain line every few seconds
//! otherwise (notebooks, logs, CI), where a bar would be invisible or a mess of control codes.
//!
//! `OML_PROGRESS=lines` forces lines, `OML_PROGRESS=off` silences both.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress reporter for a task of `total` units (bytes, images, steps).
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    unit: &'static str,
    total: u64,
    done: u64,
    start: Instant,
    last_line: Instant,
    every: Duration,
    quiet: bool,
}

impl Progress {
    /// A reporter for `total` `unit`s (`"B"` formats as MB), labelled `label`.
    pub fn new(label: impl Into<String>, total: u64, unit: &'static str) -> Self {
        let mode = std::env::var("OML_PROGRESS").unwrap_or_default();
        let quiet = mode == "off";
        let bar = (!quiet && mode != "lines" && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            let template = if unit == "B" {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            } else {
                "{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let label = label.into();
        if let Some(bar) = &bar {
            bar.set_message(label.clone());
        }
        let now = Instant::now();
        Progress {
            bar,
            label,
            unit,
            total,
            done: 0,
            start: now,
            last_line: now,
            every: Duration::from_secs(5),
            quiet,
        }
    }

    /// Sets the interval between lines (when there is no bar).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Sets the total once it is known.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// Adds `n` units done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if !self.quiet && self.last_line.elapsed() >= self.every {
            self.last_line = Instant::now();
            eprintln!("{}", self.line());
        }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The current state as one line: `label: 12.0/88.0 MB (14%), 3.1 MB/s, eta 25 s`.
    pub fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let (scale, unit) = if self.unit == "B" {
            (1e6, "MB")
        } else {
            (1.0, self.unit)
        };
        let pct = if self.total > 0 {
            format!(" ({:.0}%)", 100.0 * self.done as f64 / self.total as f64)
        } else {
            String::new()
        };
        let eta = if rate > 0.0 && self.total > self.done {
            format!(", eta {:.0} s", (self.total - self.done) as f64 / rate)
        } else {
            String::new()
        };
        if self.unit == "B" {
            format!(
                "{}: {:.1}/{:.1} {unit}{pct}, {:.1} {unit}/s{eta}",
                self.label,
                self.done as f64 / scale,
                self.total as f64 / scale,
                rate / scale
            )
        } else {
            format!(
                "{}: {}/{} {unit}{pct}, {:.1} {unit}/s{eta}",
                self.label, self.done, self.total, rate
            )
        }
    }

    /// Ends the task (clears the bar, prints a last line when there is none).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            eprintln!(
                "{} (done in {:.1} s)",
                self.line(),
                self.start.elapsed().as_secs_f64()
            );
        }
        self.quiet = true;
    }
}
