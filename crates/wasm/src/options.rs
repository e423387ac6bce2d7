//! Generation options as JavaScript passes them (`{ prompt, maxNewTokens, temperature, topK,
//! topP, seed, splitImage }`), checked and turned into a runtime [`Request`].

use pocketvlm_processor::{Message, Part, RgbImage};
use pocketvlm_runtime::engine::Request;
use pocketvlm_runtime::model::Stop;
use pocketvlm_runtime::model::sampling::SamplingOptions;
use serde::Deserialize;

use crate::errors::WebError;

/// The captioning prompt when none is given.
pub const DEFAULT_PROMPT: &str = "Can you describe this image?";
/// Tokens generated at most when `maxNewTokens` is not given.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 128;

/// Options of `caption` and `chat`; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GenerateOptions {
    /// Captioning only: the question asked about the image.
    pub prompt: Option<String>,
    pub max_new_tokens: Option<f64>,
    /// 0 (the default) is greedy decoding.
    pub temperature: Option<f64>,
    /// 0 (the default) keeps all tokens.
    pub top_k: Option<f64>,
    /// 1 (the default) keeps all tokens.
    pub top_p: Option<f64>,
    pub seed: Option<f64>,
    /// Split the image into tiles (the checkpoint's default when absent).
    pub split_image: Option<bool>,
}

/// A non-negative integer option.
fn whole(name: &str, value: f64, max: f64) -> Result<f64, WebError> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= max {
        Ok(value)
    } else {
        Err(WebError::invalid(format!("{name} must be a whole number from 0 to {max}, not {value}")))
    }
}

impl GenerateOptions {
    fn sampling(&self) -> Result<SamplingOptions, WebError> {
        let temperature = self.temperature.unwrap_or(0.0);
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(WebError::invalid(format!("temperature must be ≥ 0, not {temperature}")));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(WebError::invalid(format!("topP must be in (0, 1], not {top_p}")));
        }
        Ok(SamplingOptions {
            temperature: temperature as f32,
            top_k: whole("topK", self.top_k.unwrap_or(0.0), u32::MAX as f64)? as usize,
            top_p: top_p as f32,
            seed: whole("seed", self.seed.unwrap_or(0.0), 9007199254740991.0)? as u64,
        })
    }

    /// The new tokens asked for ([`DEFAULT_MAX_NEW_TOKENS`] when not given), at least one.
    pub(crate) fn max_new_tokens(&self) -> Result<usize, WebError> {
        let n = self.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS as f64);
        let n = whole("maxNewTokens", n, u32::MAX as f64)? as usize;
        if n == 0 {
            return Err(WebError::invalid("maxNewTokens must be at least 1"));
        }
        Ok(n)
    }

    /// The text of a caption's user turn: the prompt option, or the default.
    pub fn caption_prompt(&self) -> &str {
        self.prompt.as_deref().unwrap_or(DEFAULT_PROMPT)
    }

    /// A captioning request: one user turn with the image and the prompt.
    pub fn caption_request(&self, image: RgbImage) -> Result<Request, WebError> {
        let mut request = Request::caption(self.caption_prompt(), Some(image), self.max_new_tokens()?);
        request.split = self.split_image;
        request.sampling = self.sampling()?;
        Ok(request)
    }

    /// A chat request: the whole conversation so far (at most one image part in it, which
    /// `image` supplies).
    pub fn chat_request(&self, messages: Vec<Message>, image: Option<RgbImage>) -> Result<Request, WebError> {
        if self.prompt.is_some() {
            return Err(WebError::invalid("chat takes its text from the messages, not from a prompt option"));
        }
        if messages.is_empty() {
            return Err(WebError::invalid("chat needs at least one message"));
        }
        let image_parts = messages
            .iter()
            .map(|m| match &m.content {
                pocketvlm_processor::Content::Parts(parts) => {
                    parts.iter().filter(|p| matches!(p, Part::Image)).count()
                }
                pocketvlm_processor::Content::Text(_) => 0,
            })
            .sum::<usize>();
        if image_parts != usize::from(image.is_some()) {
            return Err(WebError::invalid(format!(
                "the messages have {image_parts} image part(s) but {} image(s) were given (at most one)",
                usize::from(image.is_some())
            )));
        }
        Ok(Request {
            messages,
            image,
            split: self.split_image,
            max_new_tokens: self.max_new_tokens()?,
            sampling: self.sampling()?,
            stop: Stop::never(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RgbImage {
        RgbImage::new(2, 2, vec![0; 12]).unwrap()
    }

    fn parse(json: &str) -> GenerateOptions {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_are_greedy_captioning() {
        let r = GenerateOptions::default().caption_request(image()).unwrap();
        assert_eq!(r.messages, vec![Message::new("user", vec![Part::Image, Part::text(DEFAULT_PROMPT)])]);
        assert_eq!((r.max_new_tokens, r.split), (DEFAULT_MAX_NEW_TOKENS, None));
        assert!(r.sampling.is_greedy());
    }

    #[test]
    fn options_are_read_in_camel_case() {
        let o = parse(
            r#"{"prompt":"What?","maxNewTokens":5,"temperature":0.7,"topK":40,"topP":0.9,"seed":3,"splitImage":false}"#,
        );
        let r = o.caption_request(image()).unwrap();
        assert_eq!(
            r.messages[0].content,
            pocketvlm_processor::Content::Parts(vec![Part::Image, Part::text("What?")])
        );
        assert_eq!((r.max_new_tokens, r.split), (5, Some(false)));
        assert_eq!(r.sampling, SamplingOptions { temperature: 0.7, top_k: 40, top_p: 0.9, seed: 3 });
        assert!(serde_json::from_str::<GenerateOptions>(r#"{"maxTokens":5}"#).is_err());
    }

    #[test]
    fn bad_values_are_type_errors() {
        for json in [
            r#"{"maxNewTokens":0}"#,
            r#"{"maxNewTokens":2.5}"#,
            r#"{"temperature":-1}"#,
            r#"{"topP":0}"#,
            r#"{"topP":1.5}"#,
            r#"{"topK":-3}"#,
            r#"{"seed":1e300}"#,
        ] {
            let err = parse(json).caption_request(image()).unwrap_err();
            assert_eq!(err.name, "TypeError", "{json}");
        }
    }

    #[test]
    fn chat_checks_the_image_parts() {
        let text = vec![Message::text("user", "hi")];
        assert!(GenerateOptions::default().chat_request(text.clone(), None).is_ok());
        assert!(GenerateOptions::default().chat_request(text, Some(image())).is_err());
        let with_image = vec![Message::new("user", vec![Part::Image, Part::text("hi")])];
        assert!(GenerateOptions::default().chat_request(with_image.clone(), None).is_err());
        assert!(GenerateOptions::default().chat_request(with_image, Some(image())).is_ok());
        assert!(GenerateOptions::default().chat_request(Vec::new(), None).is_err());
    }
}
