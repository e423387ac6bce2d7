//! Every input of the committed corpora and regressions, run through its target: what the
//! fuzzer once found stays fixed, and what it covered stays covered, in seconds and on stable.

use std::path::Path;

use pocketvlm_fuzz::{TARGETS, corpus_dir, regressions_dir};

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> =
        entries.map(|e| e.expect("a corpus entry").path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus() {
    for t in TARGETS {
        assert!(!inputs(&corpus_dir(t.name)).is_empty(), "no corpus for target {}", t.name);
    }
}

#[test]
fn corpora_and_regressions_replay() {
    for t in TARGETS {
        for path in inputs(&corpus_dir(t.name)).into_iter().chain(inputs(&regressions_dir(t.name))) {
            let data = std::fs::read(&path).expect("a corpus file reads");
            let outcome = std::panic::catch_unwind(|| (t.run)(&data));
            assert!(outcome.is_ok(), "target {} failed on {}", t.name, path.display());
        }
    }
}
