//! Calibration samples: images (with optional captions, else the model's own greedy answers),
//! windows of a text file, or both together.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pocketvlm_format::quant::Rotation;
use pocketvlm_format::quant::rotation::SplitMix64;
use pocketvlm_processor::{Message, Part, Preprocessor, Prompt as ChatPrompt, decode_image};

use crate::checkpoint::SourceMeta;
use crate::error::{CompressError, Result};
use crate::model::CpuModel;
use crate::progress::Stage;

/// Where calibration data comes from.
#[derive(Clone, Debug)]
pub enum CalibSource {
    /// A folder of `.jpg`/`.jpeg`/`.png` images; `name.txt` beside `name.jpg` is its caption.
    Images(PathBuf),
    /// A UTF-8 text file, cut into token windows (language-model-only calibration).
    Text(PathBuf),
    /// Both: the samples of the image folder followed by the text file's windows, each part
    /// drawing [`CalibOptions::samples`]; the answers and the windows share `max_tokens`.
    Both { images: PathBuf, text: PathBuf },
}

#[derive(Clone, Debug)]
pub struct CalibOptions {
    pub source: CalibSource,
    /// How many samples to draw (all when there are fewer; from each part of [`CalibSource::Both`]).
    pub samples: usize,
    /// Seed of the sample draw.
    pub seed: u64,
    /// Longest answer (images) or text window (text), in tokens.
    pub max_tokens: usize,
    /// Split images into tiles as the processor does by default (slow); off = one tile per image.
    pub tiling: bool,
    /// The user's request next to each image.
    pub instruction: String,
}

impl CalibOptions {
    pub fn new(source: CalibSource) -> Self {
        let max_tokens = if matches!(source, CalibSource::Images(_)) { 32 } else { 256 };
        Self {
            source,
            samples: 32,
            seed: 0,
            max_tokens,
            tiling: false,
            instruction: "Describe this image.".into(),
        }
    }
}

/// One calibration sequence: the loss is taken over `ids[answer_start..]`.
pub struct Sample {
    pub name: String,
    pub ids: Vec<u32>,
    pub answer_start: usize,
    /// Normalised tiles, for recomputing image features with a vision tape.
    pub pixels: Option<Tensor>,
    /// Connector output for the `<image>` positions (computed once).
    pub features: Option<Tensor>,
}

impl Sample {
    /// The image features as a model whose residual stream is rotated by `residual` sees them
    /// (`R f` per position; unrotated without one).
    pub fn features_in(&self, residual: Option<&Rotation>) -> Result<Option<Tensor>> {
        Ok(match (&self.features, residual) {
            (Some(f), Some(r)) => {
                let mut values = f.flatten_all()?.to_vec1::<f32>()?;
                r.apply_rows(&mut values)?;
                Some(Tensor::from_vec(values, f.shape(), f.device())?)
            }
            (f, _) => f.clone(),
        })
    }
}

/// The samples and how their targets were obtained.
pub struct Samples {
    pub samples: Vec<Sample>,
    /// `images`, `text` or `images+text`.
    pub mode: &'static str,
    /// `captions`, `self-distillation`, `captions+self-distillation` or `text`, and `+text` after
    /// the images' targets when both are used.
    pub targets: String,
}

fn missing(path: &Path, reason: &str) -> CompressError {
    CompressError::MissingCalibration { path: path.display().to_string(), reason: reason.into() }
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// The images of a calibration folder, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(missing(dir, "not a directory"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| missing(dir, &e.to_string()))?;
    let mut images: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_image(p)).collect();
    images.sort();
    if images.is_empty() {
        return Err(missing(dir, "no .jpg, .jpeg or .png files"));
    }
    Ok(images)
}

fn chat_prompt(meta: &SourceMeta) -> Result<ChatPrompt> {
    ChatPrompt::new(&meta.tokenizer_bytes, &meta.tokenizer, meta.processor.image_seq_len)
        .map_err(|e| CompressError::Tokenizer(e.to_string()))
}

/// Stop tokens of greedy answers: end of utterance and the generation config's eos ids.
pub fn stop_ids(meta: &SourceMeta, chat: &ChatPrompt) -> Vec<u32> {
    let mut stop = meta.generation.eos_token_ids.clone();
    stop.push(chat.special_tokens().end_of_utterance);
    stop
}

/// Build the calibration samples (decoding, preprocessing, and greedy answers where there is no
/// caption).
pub fn prepare(model: &CpuModel, meta: &SourceMeta, opts: &CalibOptions, stage: &Stage) -> Result<Samples> {
    let chat = chat_prompt(meta)?;
    match &opts.source {
        CalibSource::Images(dir) => image_samples(model, meta, &chat, dir, opts, stage),
        CalibSource::Text(path) => text_samples(&chat, path, opts),
        CalibSource::Both { images, text } => {
            let mut both = image_samples(model, meta, &chat, images, opts, stage)?;
            let windows = text_samples(&chat, text, opts)?;
            both.samples.extend(windows.samples);
            Ok(Samples {
                samples: both.samples,
                mode: "images+text",
                targets: format!("{}+text", both.targets),
            })
        }
    }
}

/// Up to `opts.samples` images of `dir`, drawn with `opts.seed`, each with its caption or the
/// model's greedy answer.
fn image_samples(
    model: &CpuModel,
    meta: &SourceMeta,
    chat: &ChatPrompt,
    dir: &Path,
    opts: &CalibOptions,
    stage: &Stage,
) -> Result<Samples> {
    let mut rng = SplitMix64(opts.seed);
    let mut images = list_images(dir)?;
    rng.shuffle(&mut images);
    images.truncate(opts.samples.max(1));
    let pre = Preprocessor::new(&meta.processor).map_err(|e| CompressError::Tokenizer(e.to_string()))?;
    let stop = stop_ids(meta, chat);
    let eou = chat.special_tokens().end_of_utterance;
    let (mut captions, mut generated) = (0, 0);
    stage.set_total(images.len() as u64);
    let mut samples = Vec::new();
    for path in images {
        let unreadable =
            |reason: String| CompressError::UnreadableImage { path: path.display().to_string(), reason };
        let bytes = std::fs::read(&path).map_err(|e| unreadable(e.to_string()))?;
        let image = decode_image(&bytes).map_err(|e| unreadable(e.to_string()))?;
        let prepared = pre.preprocess(&image, opts.tiling).map_err(|e| unreadable(e.to_string()))?;
        let m = prepared.tile_size;
        let pixels =
            Tensor::from_vec(prepared.pixel_values.clone(), (prepared.n_tiles, 3, m, m), &Device::Cpu)?;
        let messages = [Message::new("user", vec![Part::Image, Part::text(opts.instruction.clone())])];
        let tok = |e: pocketvlm_processor::ProcessorError| CompressError::Tokenizer(e.to_string());
        let text = chat.render(&messages, true).map_err(tok)?;
        let prompt_ids = chat.encode(&text, &[prepared.grid()]).map_err(tok)?;
        let features = model.image_features(&pixels, None)?;
        let caption_path = path.with_extension("txt");
        let mut answer = if caption_path.exists() {
            captions += 1;
            let caption = std::fs::read_to_string(&caption_path).map_err(|e| unreadable(e.to_string()))?;
            let mut ids = chat.tokenize(&format!(" {}", caption.trim()), false).map_err(tok)?;
            ids.truncate(opts.max_tokens.saturating_sub(1).max(1));
            ids.push(eou);
            ids
        } else {
            generated += 1;
            let embeds = model.merge_embeddings(&prompt_ids, Some(&features))?;
            model.generate_from_embeddings(&embeds, opts.max_tokens, &stop)?
        };
        if answer.is_empty() {
            answer.push(eou);
        }
        let answer_start = prompt_ids.len();
        let mut ids = prompt_ids;
        ids.extend(answer);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        samples.push(Sample { name, ids, answer_start, pixels: Some(pixels), features: Some(features) });
        stage.step();
    }
    let targets = match (captions, generated) {
        (_, 0) => "captions",
        (0, _) => "self-distillation",
        _ => "captions+self-distillation",
    };
    Ok(Samples { samples, mode: "images", targets: targets.into() })
}

/// Up to `opts.samples` windows of `opts.max_tokens` tokens of the text file at `path`, drawn
/// with `opts.seed`; the loss is taken over every token but the first.
fn text_samples(chat: &ChatPrompt, path: &Path, opts: &CalibOptions) -> Result<Samples> {
    let mut rng = SplitMix64(opts.seed);
    if !path.is_file() {
        return Err(missing(path, "no such file"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| missing(path, &e.to_string()))?;
    let ids = chat.tokenize(&text, false).map_err(|e| CompressError::Tokenizer(e.to_string()))?;
    let window = opts.max_tokens.max(2);
    let mut windows: Vec<usize> = (0..ids.len() / window).collect();
    if windows.is_empty() {
        return Err(missing(path, &format!("fewer than {window} tokens")));
    }
    rng.shuffle(&mut windows);
    windows.truncate(opts.samples.max(1));
    let samples = windows
        .into_iter()
        .map(|w| Sample {
            name: format!("tokens {}..{}", w * window, (w + 1) * window),
            ids: ids[w * window..(w + 1) * window].to_vec(),
            answer_start: 1,
            pixels: None,
            features: None,
        })
        .collect();
    Ok(Samples { samples, mode: "text", targets: "text".into() })
}
