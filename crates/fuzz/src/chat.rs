//! Chat messages from a web page, rendered through the checkpoint's template, expanded with
//! image tokens and tokenized; and token ids from the model, streamed back to text.
//!
//! Input: UTF-8. When it parses as a JSON list of messages it is used as such (any structure a
//! page can pass: strings or parts, unknown roles, `<image>` or special tokens inside text,
//! template syntax); otherwise the whole text is one user turn after an image, the hostile
//! content case. Either way the bytes, two at a time, are also a sequence of generated ids.

use pocketvlm_processor::{ImageGrid, Message, Part, Prompt};

use crate::fixture;

pub fn run(data: &[u8]) {
    let prompt = &fixture().prompt;
    if let Ok(text) = std::str::from_utf8(data) {
        let messages = serde_json::from_str::<Vec<Message>>(text)
            .unwrap_or_else(|_| vec![Message::new("user", vec![Part::Image, Part::text(text)])]);
        encode(prompt, &messages);
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            let _ = prompt.render_serialized(&value, true);
        }
    }
    let ids = generated_ids(data);
    stream(prompt, &ids, true);
    stream(prompt, &ids, false);
}

/// Render, expand one grid per `<image>` the rendered text holds (alternately split and not),
/// tokenize; ids that come out decode.
fn encode(prompt: &Prompt, messages: &[Message]) {
    let Ok(text) = prompt.render(messages, true) else { return };
    let images = text.matches("<image>").count();
    let grids: Vec<ImageGrid> = (0..images)
        .map(|i| if i % 2 == 0 { ImageGrid { rows: 2, cols: 3 } } else { ImageGrid::default() })
        .collect();
    if let Ok(ids) = prompt.encode(&text, &grids) {
        prompt.decode(&ids, false).expect("ids of an encoded prompt decode");
    }
}

/// Ids the model could generate: the bytes read as little-endian `u16`, modulo the vocabulary.
fn generated_ids(data: &[u8]) -> Vec<u32> {
    const VOCAB: u32 = 49_280;
    data.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) % VOCAB).collect()
}

/// Streaming decode, one id at a time: its pieces concatenate to the decode of all ids.
fn stream(prompt: &Prompt, ids: &[u32], skip_special_tokens: bool) {
    let whole = prompt.decode(ids, skip_special_tokens).expect("any in-vocabulary ids decode");
    let mut decoder = prompt.stream_decoder(skip_special_tokens);
    let mut pieces = String::new();
    for &id in ids {
        if let Some(piece) = decoder.step(prompt, id).expect("a streamed step decodes") {
            pieces.push_str(&piece);
        }
    }
    if let Some(rest) = decoder.finish(prompt).expect("the streamed rest decodes") {
        pieces.push_str(&rest);
    }
    assert_eq!(pieces, whole, "streamed text differs from the whole decode");
}
