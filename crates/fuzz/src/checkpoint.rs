//! A Hugging Face checkpoint directory, read as `cargo xtask convert` / `compress` read it:
//! `config.json`, the processor, generation and tokenizer settings, the chat template, the
//! tokenizer, and the safetensors header and tensors — then the runtime's view of the result
//! (the processor and prompt built from those settings).
//!
//! Input: the files of [`FILES`] joined by [`segments::SEPARATOR`], an empty part meaning the
//! file is absent. The safetensors part starts with a little-endian `u32`: that many zero bytes
//! are appended to the file (at most [`MAX_PADDING`]), so a seed can be a header alone and the
//! fuzzer spends its mutations on the header rather than on tensor bytes.

use std::cell::RefCell;
use std::path::Path;

use pocketvlm_compress::checkpoint::{Checkpoint, Source, SourceMeta};
use pocketvlm_compress::model::CpuModel;
use pocketvlm_processor::{Message, Part, Preprocessor, Prompt};

use crate::segments;

/// The files of a checkpoint, in the order an input lists them.
pub const FILES: [&str; 8] = [
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "tokenizer.json",
    "model.safetensors",
];

/// The most zero bytes appended to the safetensors file.
pub const MAX_PADDING: u32 = 16 << 20;

pub fn run(data: &[u8]) {
    let parts: [&[u8]; FILES.len()] = segments::split(data);
    thread_local! {
        static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
    }
    DIR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dir = slot.get_or_insert_with(|| tempfile::tempdir().expect("a temporary directory"));
        write_files(dir.path(), &parts);
        read(dir.path());
    });
}

fn write_files(dir: &Path, parts: &[&[u8]; FILES.len()]) {
    for (name, part) in FILES.iter().zip(parts) {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        if part.is_empty() {
            continue;
        }
        let bytes = if *name == "model.safetensors" { padded(part) } else { part.to_vec() };
        std::fs::write(&path, bytes).expect("a temporary file writes");
    }
}

/// The safetensors part: a `u32` padding length, then the file's head.
fn padded(part: &[u8]) -> Vec<u8> {
    let (len, head) = part.split_at(part.len().min(4));
    let mut n = [0u8; 4];
    n[..len.len()].copy_from_slice(len);
    let padding = u32::from_le_bytes(n).min(MAX_PADDING) as usize;
    let mut bytes = head.to_vec();
    bytes.resize(head.len() + padding, 0);
    bytes
}

fn read(dir: &Path) {
    // the weights alone, whatever the settings say
    if let Ok(checkpoint) = Checkpoint::open(dir) {
        let _ = checkpoint.tensors();
    }
    // the whole checkpoint as the compressor opens it, then the runtime's view of its settings
    let meta = match Source::open(dir) {
        Ok(source) => {
            let _ = CpuModel::from_source(&source);
            source.meta
        }
        Err(_) => match SourceMeta::read(dir) {
            Ok(meta) => meta,
            Err(_) => return,
        },
    };
    let _ = Preprocessor::new(&meta.processor);
    let Ok(prompt) = Prompt::new(&meta.tokenizer_bytes, &meta.tokenizer, meta.processor.image_seq_len) else {
        return;
    };
    let messages = [Message::new("user", vec![Part::Image, Part::text("What is in the image?")])];
    if let Ok(text) = prompt.render(&messages, true) {
        let _ = prompt.encode(&text, &[pocketvlm_processor::ImageGrid { rows: 1, cols: 2 }]);
    }
}
