//! The compressor's progress drawn on the terminal: one indicatif bar per stage, and a line on
//! stderr per timed part and per note.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use pocketvlm_compress::progress::{Observer, Progress};

/// Bars and `[compress] …` lines.
pub fn bars() -> Progress {
    Progress::new(Bars { bar: Mutex::new(None) })
}

struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn with(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f(bar);
        }
    }
}

impl Observer for Bars {
    fn begin(&self, stage: &str) {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(stage.to_string());
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn total(&self, _stage: &str, steps: u64) {
        self.with(|bar| bar.set_length(steps));
    }

    fn advance(&self, _stage: &str, steps: u64) {
        self.with(|bar| bar.inc(steps));
    }

    fn end(&self, _stage: &str) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }

    fn lap(&self, part: &str, seconds: f64) {
        eprintln!("[compress] {part}: {seconds:.1} s");
    }

    fn note(&self, line: &str) {
        eprintln!("[compress] {line}");
    }
}
