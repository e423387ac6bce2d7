//! Chat template → image-token expansion → token ids, and ids → text.
//!
//! Mirrors `Idefics3Processor`: `apply_chat_template` renders the checkpoint's Jinja template
//! (Python Jinja configured as transformers does: `trim_blocks`, `lstrip_blocks`, the
//! `loopcontrols` extension, `raise_exception`, a `tojson` that behaves like Python's
//! `json.dumps(ensure_ascii=False)`, and the tokenizer's special tokens as variables); then each
//! `<image>` placeholder becomes, for an image split into `rows × cols` tiles with `S` image tokens
//! per tile (`image_seq_len`):
//!
//! ```text
//! for r in 1..=rows { for c in 1..=cols { <fake_token_around_image><row_r_col_c><image>×S }  "\n" }
//! "\n<fake_token_around_image><global-img>" <image>×S "<fake_token_around_image>"
//! ```
//!
//! and for an unsplit image (`rows = cols = 0`):
//! `<fake_token_around_image><global-img>` `<image>×S` `<fake_token_around_image>`.
//! The expanded text is tokenized by `tokenizer.json` with its post-processor applied
//! (`add_special_tokens=True`, as the processor calls the tokenizer); SmolVLM's adds no BOS, the
//! template itself starts with `<|im_start|>`.

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use pocketvlm_format::config::TokenizerInfo;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::ProcessorError;
use crate::preprocess::ImageGrid;

/// One chat message: `{"role": ..., "content": ...}` as given to `apply_chat_template`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

/// A message's content: a list of parts (the usual multimodal form) or a plain string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Parts(Vec<Part>),
    Text(String),
}

/// A content part: `{"type": "text", "text": ...}` or `{"type": "image"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    Image,
}

impl Message {
    pub fn new(role: impl Into<String>, parts: Vec<Part>) -> Self {
        Self { role: role.into(), content: Content::Parts(parts) }
    }

    /// A message with a single text part.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self::new(role, vec![Part::text(text)])
    }
}

impl Part {
    pub fn text(text: impl Into<String>) -> Self {
        Part::Text { text: text.into() }
    }
}

/// Ids of the tokens the prompt format and the generation loop need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<image>`: the placeholder whose embeddings are replaced by image features.
    pub image: u32,
    /// `<fake_token_around_image>`.
    pub fake_image: u32,
    /// `<global-img>`.
    pub global_image: u32,
    /// `<end_of_utterance>`.
    pub end_of_utterance: u32,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

const TEMPLATE_NAME: &str = "chat_template";

/// The text side of the processor: chat template, image-token expansion, tokenizer.
pub struct Prompt {
    tokenizer: Tokenizer,
    env: Environment<'static>,
    info: TokenizerInfo,
    image_seq_len: usize,
    special: SpecialTokens,
}

impl std::fmt::Debug for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompt")
            .field("image_seq_len", &self.image_seq_len)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl Prompt {
    /// Load `tokenizer.json` bytes and compile `info.chat_template`.
    ///
    /// Fails if the tokenizer or template does not parse, or if one of the image/utterance
    /// tokens named in `info` is not in the vocabulary.
    pub fn new(
        tokenizer_json: &[u8],
        info: &TokenizerInfo,
        image_seq_len: usize,
    ) -> Result<Self, ProcessorError> {
        let tokenizer =
            Tokenizer::from_bytes(tokenizer_json).map_err(|e| ProcessorError::Tokenizer(e.to_string()))?;
        let id = |tok: &str| {
            tokenizer.token_to_id(tok).ok_or_else(|| ProcessorError::UnknownSpecialToken(tok.into()))
        };
        let optional = |tok: &Option<String>| tok.as_deref().map(id).transpose();
        let special = SpecialTokens {
            image: id(&info.image_token)?,
            fake_image: id(&info.fake_image_token)?,
            global_image: id(&info.global_image_token)?,
            end_of_utterance: id(&info.end_of_utterance_token)?,
            bos: optional(&info.bos_token)?,
            eos: optional(&info.eos_token)?,
            pad: optional(&info.pad_token)?,
        };
        let env = template_environment(info.chat_template.clone())?;
        Ok(Self { tokenizer, env, info: info.clone(), image_seq_len, special })
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Id of `<image>`.
    pub fn image_token_id(&self) -> u32 {
        self.special.image
    }

    /// Id of the tokenizer's eos token (`<end_of_utterance>` for SmolVLM), if it has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.special.eos
    }

    /// `<image>` tokens per tile.
    pub fn image_seq_len(&self) -> usize {
        self.image_seq_len
    }

    /// Id of a token given as text (e.g. `"<row_1_col_2>"`), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Render the chat template (`apply_chat_template(messages, tokenize=False)`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ProcessorError> {
        self.render_serialized(messages, add_generation_prompt)
    }

    /// [`Self::render`] for messages in any serializable shape (e.g. a `serde_json::Value`), for
    /// templates that read fields beyond `role` and `content`. Objects keep the key order the
    /// serializer yields; a `serde_json::Value` built without serde_json's `preserve_order`
    /// feature has sorted keys, which only a template printing whole objects (`tojson`) shows.
    pub fn render_serialized<S: Serialize + ?Sized>(
        &self,
        messages: &S,
        add_generation_prompt: bool,
    ) -> Result<String, ProcessorError> {
        let template_error = |e: JinjaError| ProcessorError::Template(format!("{e:#}"));
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        let ctx = minijinja::context! {
            messages => Serde(messages),
            add_generation_prompt => add_generation_prompt,
            tools => (),
            documents => (),
            bos_token => self.info.bos_token.clone(),
            eos_token => self.info.eos_token.clone(),
            pad_token => self.info.pad_token.clone(),
        };
        tmpl.render(ctx).map_err(template_error)
    }

    /// Replace each `<image>` in `text` by its tile-token string (see the module docs), in order.
    ///
    /// The number of placeholders must equal `grids.len()` (also when it is zero: a text-only
    /// prompt must not contain `<image>`). Grids beyond the vocabulary's `<row_r_col_c>` tokens
    /// are rejected.
    pub fn expand_images(&self, text: &str, grids: &[ImageGrid]) -> Result<String, ProcessorError> {
        let token = self.info.image_token.as_str();
        let placeholders = text.matches(token).count();
        if placeholders != grids.len() {
            return Err(ProcessorError::ImageCountMismatch { placeholders, images: grids.len() });
        }
        let fake = self.info.fake_image_token.as_str();
        let global = self.info.global_image_token.as_str();
        let tiles = token.repeat(self.image_seq_len);
        let mut out = String::with_capacity(text.len() + grids.len() * (tiles.len() + 64));
        let mut pieces = text.split(token);
        out.push_str(pieces.next().unwrap_or_default());
        for (grid, rest) in grids.iter().zip(pieces) {
            for r in 1..=grid.rows {
                for c in 1..=grid.cols {
                    let tag = format!("<row_{r}_col_{c}>");
                    if self.tokenizer.token_to_id(&tag).is_none() {
                        return Err(ProcessorError::UnknownSpecialToken(tag));
                    }
                    out.push_str(fake);
                    out.push_str(&tag);
                    out.push_str(&tiles);
                }
                out.push('\n');
            }
            if grid.rows != 0 || grid.cols != 0 {
                out.push('\n');
            }
            out.push_str(fake);
            out.push_str(global);
            out.push_str(&tiles);
            out.push_str(fake);
            out.push_str(rest);
        }
        Ok(out)
    }

    /// Expand the image placeholders and tokenize: the processor's `input_ids`.
    pub fn encode(&self, text: &str, grids: &[ImageGrid]) -> Result<Vec<u32>, ProcessorError> {
        let expanded = self.expand_images(text, grids)?;
        self.tokenize(&expanded, true)
    }

    /// Tokenize text as is (special tokens in the text are matched atomically).
    /// `add_special_tokens` applies the tokenizer's post-processor.
    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ProcessorError> {
        let enc = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|e| ProcessorError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids → text (`tokenizer.decode(ids, skip_special_tokens=...)`). Invalid UTF-8 (a character
    /// cut between tokens) becomes U+FFFD; use [`StreamDecoder`] while generating.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ProcessorError> {
        self.tokenizer.decode(ids, skip_special_tokens).map_err(|e| ProcessorError::Tokenizer(e.to_string()))
    }

    /// A decoder for generated ids that emits text as soon as it is complete UTF-8.
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder { skip_special_tokens, ids: Vec::new(), context: 0, prefix: String::new() }
    }
}

/// Incremental detokenizer for streaming generation.
///
/// It keeps a window of ids: `context` ids whose text was already emitted, then the ids not yet
/// emitted. On each new id the window is decoded; when that text extends the context's text
/// (`prefix`) and does not end in U+FFFD (a multi-byte character still cut), the extension is
/// emitted and the just-emitted ids become the new context. Decoding with one emission of
/// context keeps byte-level and space-prefix decoders consistent with decoding the whole
/// sequence, so the concatenated pieces equal `decode(all ids)`.
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    skip_special_tokens: bool,
    ids: Vec<u32>,
    context: usize,
    prefix: String,
}

impl StreamDecoder {
    /// Feed one generated id; returns the newly completed text, if any.
    pub fn step(&mut self, prompt: &Prompt, id: u32) -> Result<Option<String>, ProcessorError> {
        self.ids.push(id);
        let text = prompt.decode(&self.ids, self.skip_special_tokens)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        self.emit(prompt, text).map(Some)
    }

    /// Text still held back at the end of generation (e.g. an incomplete character, as U+FFFD).
    pub fn finish(&mut self, prompt: &Prompt) -> Result<Option<String>, ProcessorError> {
        let text = prompt.decode(&self.ids, self.skip_special_tokens)?;
        if text.len() <= self.prefix.len() {
            return Ok(None);
        }
        self.emit(prompt, text).map(Some)
    }

    fn emit(&mut self, prompt: &Prompt, text: String) -> Result<String, ProcessorError> {
        let Some(new_text) = text.strip_prefix(self.prefix.as_str()) else {
            return Err(ProcessorError::Tokenizer(format!(
                "streaming decode is not prefix-stable: {:?} then {text:?}",
                self.prefix
            )));
        };
        let new_text = new_text.to_owned();
        self.ids.drain(..self.context);
        self.context = self.ids.len();
        self.prefix = prompt.decode(&self.ids, self.skip_special_tokens)?;
        Ok(new_text)
    }
}

/// The Jinja environment transformers renders chat templates in.
fn template_environment(source: String) -> Result<Environment<'static>, ProcessorError> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ProcessorError::Template(e.to_string()))?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<Value, JinjaError> {
        Err(JinjaError::new(ErrorKind::InvalidOperation, message))
    });
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source).map_err(|e| ProcessorError::Template(format!("{e:#}")))?;
    Ok(env)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, i.e. Python's separators `", "`/`": "` (`","` between items when
/// indenting) and no HTML escaping.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) => Some(" ".repeat(v.as_i64().unwrap_or(0).max(0) as usize)),
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => return Err(JinjaError::new(ErrorKind::InvalidOperation, "separators must be a pair")),
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, depth: usize) -> Result<(), JinjaError> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                out.push_str(&python_float_repr(f64::try_from(v.clone())?));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, o, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                let key_text = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
                    _ => key.to_string(),
                };
                write_json_str(out, &key_text, o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, &v.get_item(key)?, o, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        kind => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` as `json.dumps` writes it: shortest round-trip digits, exponent form
/// when the decimal exponent is below −4 or at least 16, `NaN`/`Infinity`.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{sign}{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_like_python() {
        for (x, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn tojson_like_python() {
        let env = template_environment(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'a\"<é>\n' | tojson }}".to_owned(),
        )
        .unwrap();
        let x = serde_json::json!({"b": [1, 2.5, null, true], "a": {}});
        let got =
            env.get_template(TEMPLATE_NAME).unwrap().render(minijinja::context! { x => Serde(&x) }).unwrap();
        // serde_json without preserve_order sorts object keys.
        assert_eq!(
            got,
            "{\"a\": {}, \"b\": [1, 2.5, null, true]}|{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ]\n}|\"a\\\"<é>\\n\""
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let env = template_environment("{{ raise_exception('nope') }}".to_owned()).unwrap();
        let err = env.get_template(TEMPLATE_NAME).unwrap().render(()).unwrap_err();
        assert!(format!("{err:#}").contains("nope"));
    }

    #[test]
    fn message_serialization() {
        let m = Message::new("user", vec![Part::Image, Part::text("hi")]);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":[{"type":"image"},{"type":"text","text":"hi"}]}"#
        );
        let back: Message = serde_json::from_str(r#"{"role":"user","content":"plain"}"#).unwrap();
        assert_eq!(back.content, Content::Text("plain".into()));
    }
}
