//! How far a long library call is, reported to whoever shows it: `cargo xtask` draws progress
//! bars and stage times from these events; tests and other callers pass [`Progress::silent`].
//!
//! A call runs as named stages (`"statistics"`, `"decompositions"`, …). Each [`Stage`] reports
//! its begin, its number of steps once known, each step done, and its end (when dropped).
//! Besides stages, a call reports the time of each part it times ([`Progress::lap`]) and lines
//! worth showing ([`Progress::note`]).

use std::fmt;
use std::sync::Arc;

/// What receives the events (every method does nothing by default).
pub trait Observer: Send + Sync {
    fn begin(&self, _stage: &str) {}
    fn total(&self, _stage: &str, _steps: u64) {}
    fn advance(&self, _stage: &str, _steps: u64) {}
    fn end(&self, _stage: &str) {}
    /// A timed part of the call took `seconds`.
    fn lap(&self, _part: &str, _seconds: f64) {}
    fn note(&self, _line: &str) {}
}

struct Silent;

impl Observer for Silent {}

/// Where a call reports its progress.
#[derive(Clone)]
pub struct Progress(Arc<dyn Observer>);

impl Progress {
    pub fn new(observer: impl Observer + 'static) -> Self {
        Self(Arc::new(observer))
    }

    /// Reports nothing.
    pub fn silent() -> Self {
        Self::new(Silent)
    }

    /// Begin stage `name`; it ends when the returned [`Stage`] is dropped.
    pub fn stage(&self, name: &'static str) -> Stage {
        self.0.begin(name);
        Stage { observer: self.0.clone(), name }
    }

    pub fn lap(&self, part: &str, seconds: f64) {
        self.0.lap(part, seconds);
    }

    pub fn note(&self, line: &str) {
        self.0.note(line);
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::silent()
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Progress")
    }
}

/// One running stage of a call.
pub struct Stage {
    observer: Arc<dyn Observer>,
    name: &'static str,
}

impl Stage {
    /// The stage has `steps` steps.
    pub fn set_total(&self, steps: u64) {
        self.observer.total(self.name, steps);
    }

    /// One more step is done.
    pub fn step(&self) {
        self.observer.advance(self.name, 1);
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.observer.end(self.name);
    }
}
