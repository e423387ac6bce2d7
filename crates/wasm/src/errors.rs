//! The typed errors the JavaScript API throws: every runtime failure maps to one error class
//! (`name`) with the fields a page needs to react (an HTTP status, the shard that failed its
//! check, the prompt length and limit).

use pocketvlm_processor::ProcessorError;
use pocketvlm_runtime::RuntimeError;
use serde::Serialize;

/// The error classes of the JavaScript API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorName {
    /// No WebGPU (no `navigator.gpu`, no adapter, or no device could be created).
    NoWebGpu,
    /// A model file could not be downloaded.
    Fetch,
    /// A model file's bytes differ from the manifest.
    Integrity,
    DeviceLost,
    OutOfMemory,
    /// The caller stopped the operation, or the model was disposed under it.
    Abort,
    /// The image could not be decoded or has an impossible size.
    ImageDecode,
    PromptTooLong,
    /// A valid model this runtime cannot run, e.g. arithmetic its kernels lack (an online
    /// rotation core above 64, a weight group that is not a whole number of words); the message
    /// names the tensor and the reason.
    UnsupportedModel,
    /// An option or argument has the wrong type or value.
    Type,
    /// Anything else (a malformed model, an internal failure).
    Other,
}

impl ErrorName {
    /// The JavaScript class name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorName::NoWebGpu => "NoWebGPUError",
            ErrorName::Fetch => "FetchError",
            ErrorName::Integrity => "IntegrityError",
            ErrorName::DeviceLost => "DeviceLostError",
            ErrorName::OutOfMemory => "OutOfMemoryError",
            ErrorName::Abort => "AbortError",
            ErrorName::ImageDecode => "ImageDecodeError",
            ErrorName::PromptTooLong => "PromptTooLongError",
            ErrorName::UnsupportedModel => "UnsupportedModelError",
            ErrorName::Type => "TypeError",
            ErrorName::Other => "PocketVLMError",
        }
    }
}

/// An error as JavaScript sees it: class name, message and the class's fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WebError {
    #[serde(skip)]
    pub kind: ErrorName,
    pub name: &'static str,
    pub message: String,
    #[serde(flatten)]
    pub fields: Box<ErrorFields>,
}

/// The fields of the error classes that have any (absent ones are not serialized).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFields {
    /// `FetchError`: the HTTP status (absent for network and CORS failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `FetchError`: the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `IntegrityError`: the file that failed its check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// `IntegrityError`: what the manifest records (`"sha256 <hex>"` or `"<n> bytes"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// `IntegrityError`: the expected sha256 in hex, when the hash (not the size) differed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_sha256: Option<String>,
    /// `PromptTooLongError`: the prompt's tokens, the new tokens asked for and the model's
    /// context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl WebError {
    pub fn new(kind: ErrorName, message: impl Into<String>) -> Self {
        Self::with_fields(kind, message, ErrorFields::default())
    }

    pub fn with_fields(kind: ErrorName, message: impl Into<String>, fields: ErrorFields) -> Self {
        Self { kind, name: kind.as_str(), message: message.into(), fields: Box::new(fields) }
    }

    pub fn abort(message: impl Into<String>) -> Self {
        Self::new(ErrorName::Abort, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorName::Type, message)
    }
}

impl From<RuntimeError> for WebError {
    fn from(e: RuntimeError) -> Self {
        let message = e.to_string();
        match e {
            RuntimeError::NoWebGpu(_) | RuntimeError::NoAdapter(_) | RuntimeError::RequestDevice(_) => {
                Self::new(ErrorName::NoWebGpu, message)
            }
            RuntimeError::DeviceLost(_) => Self::new(ErrorName::DeviceLost, message),
            RuntimeError::OutOfMemory(_) => Self::new(ErrorName::OutOfMemory, message),
            RuntimeError::PromptTooLong { tokens, max_new_tokens, limit } => {
                let fields = ErrorFields {
                    tokens: Some(tokens),
                    max_new_tokens: Some(max_new_tokens),
                    limit: Some(limit),
                    ..ErrorFields::default()
                };
                Self::with_fields(ErrorName::PromptTooLong, message, fields)
            }
            RuntimeError::Fetch { url, status, .. } => {
                let fields = ErrorFields { status, url: Some(url), ..ErrorFields::default() };
                Self::with_fields(ErrorName::Fetch, message, fields)
            }
            RuntimeError::Integrity { file, expected, .. } => {
                let fields = ErrorFields {
                    shard: Some(file),
                    expected_sha256: expected.strip_prefix("sha256 ").map(str::to_owned),
                    expected: Some(expected),
                    ..ErrorFields::default()
                };
                Self::with_fields(ErrorName::Integrity, message, fields)
            }
            RuntimeError::Processor(
                ProcessorError::ImageDecode(_)
                | ProcessorError::InvalidImage(_)
                | ProcessorError::ImageTooLarge { .. },
            ) => Self::new(ErrorName::ImageDecode, message),
            RuntimeError::Aborted(_) => Self::new(ErrorName::Abort, message),
            RuntimeError::UnsupportedModel(_) => Self::new(ErrorName::UnsupportedModel, message),
            _ => Self::new(ErrorName::Other, message),
        }
    }
}

impl From<ProcessorError> for WebError {
    fn from(e: ProcessorError) -> Self {
        RuntimeError::Processor(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_map_to_named_classes_with_their_fields() {
        let e: WebError =
            RuntimeError::Fetch { url: "u/shard".into(), status: Some(404), message: "x".into() }.into();
        assert_eq!(
            (e.name, e.fields.status, e.fields.url.as_deref()),
            ("FetchError", Some(404), Some("u/shard"))
        );

        let e: WebError = RuntimeError::Integrity {
            file: "shard-00001.bin".into(),
            expected: "sha256 abcd".into(),
            found: "sha256 ef01".into(),
        }
        .into();
        assert_eq!(e.name, "IntegrityError");
        assert_eq!(
            (e.fields.shard.as_deref(), e.fields.expected_sha256.as_deref()),
            (Some("shard-00001.bin"), Some("abcd"))
        );

        let e: WebError = RuntimeError::PromptTooLong { tokens: 9000, max_new_tokens: 8, limit: 8192 }.into();
        assert_eq!(
            (e.name, e.fields.tokens, e.fields.max_new_tokens, e.fields.limit),
            ("PromptTooLongError", Some(9000), Some(8), Some(8192))
        );

        let e: WebError = ProcessorError::InvalidImage("0x0".into()).into();
        assert_eq!(e.name, "ImageDecodeError");
        let e: WebError = RuntimeError::NoWebGpu("no navigator.gpu".into()).into();
        assert_eq!(e.name, "NoWebGPUError");
        let e: WebError = RuntimeError::DeviceLost("gone".into()).into();
        assert_eq!(e.name, "DeviceLostError");
        let e: WebError = RuntimeError::OutOfMemory("kv".into()).into();
        assert_eq!(e.name, "OutOfMemoryError");
        let e: WebError = RuntimeError::Aborted("load".into()).into();
        assert_eq!(e.name, "AbortError");
        let e: WebError = RuntimeError::UnsupportedModel("the model is quantized (w8a8)".into()).into();
        assert_eq!(e.name, "UnsupportedModelError");
        assert!(e.message.contains("the model is quantized (w8a8)"), "{}", e.message);
        let e: WebError = RuntimeError::Shape("bad".into()).into();
        assert_eq!(e.name, "PocketVLMError");
    }

    #[test]
    fn only_present_fields_are_serialized() {
        let json = serde_json::to_value(WebError::abort("stopped")).unwrap();
        assert_eq!(json, serde_json::json!({"name": "AbortError", "message": "stopped"}));
    }
}
