//! OpenAI's request and response shapes (the parts Ember serves), and its error body.
//!
//! Requests are parsed leniently where OpenAI's clients send fields Ember does not use
//! (`frequency_penalty`, `user`, ...: ignored) and strictly where a value would change the
//! answer (a wrong type, `n` other than 1, an empty prompt: 400).

use serde::Deserialize;
use serde_json::{json, Value};

/// An error answer: its HTTP status and OpenAI's `{"error": {...}}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// OpenAI's error code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about the request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// An error of any status.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// With the request field at fault.
    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// With an error code.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// OpenAI's error body.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Whether a last chunk carries the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields chat and text completions share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<u64>,
    /// 0: greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold.
    pub top_p: Option<f32>,
    /// Sampler seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Answers per request (only 1).
    pub n: Option<u64>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// `include_usage`.
    pub stream_options: Option<StreamOptions>,
    /// Chat: `true` for each token's log-probability; text completions: how many
    /// alternatives (OpenAI's legacy form).
    pub logprobs: Option<LogprobsParam>,
    /// Chat: alternatives per token (0-20; needs `logprobs: true`).
    pub top_logprobs: Option<u64>,
}

/// `logprobs`: a flag (chat) or a count (text completions).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum LogprobsParam {
    /// Chat's form.
    Flag(bool),
    /// Text completions' form: the alternatives per token.
    Count(u64),
}

/// A generated token's log-probabilities with the tokens as text, as the answers carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The token's text (one token decoded alone: may be part of a character).
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The likeliest tokens' text and log-probabilities, most likely first.
    pub top: Vec<(String, f32)>,
}

impl TokenLogprobs {
    /// Chat's `logprobs.content[i]`.
    pub fn chat(&self) -> Value {
        let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
        let mut e = entry(&self.token, self.logprob);
        e["top_logprobs"] = self.top.iter().map(|(t, p)| entry(t, *p)).collect();
        e
    }

    /// Text completions' `logprobs` of `tokens` (text starting at byte `offset` of the
    /// answer for each).
    pub fn legacy(tokens: &[TokenLogprobs], offsets: &[usize]) -> Value {
        json!({
            "tokens": tokens.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
            "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
            "top_logprobs": tokens.iter().map(|t| {
                t.top.iter().map(|(k, p)| (k.clone(), json!(p))).collect::<serde_json::Map<_, _>>()
            }).collect::<Vec<_>>(),
            "text_offset": offsets,
        })
    }
}

/// A chat message's `content`: text, or a list of parts of which the text ones are used.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts (`{"type": "text", "text": ...}`).
    Parts(Vec<Part>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer` (as system), `user` or `assistant`.
    pub role: String,
    /// Its text; `null` for an assistant message with tool calls only (refused).
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The model's id (`GET /v1/models`).
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling and streaming.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt` of a text completion: one string, or a list holding one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// A list (exactly one element is served).
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The model's id.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling and streaming.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `input` of an embeddings request.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    /// The model's id.
    pub model: String,
    /// The texts.
    pub input: Input,
    /// `float` (the default) only.
    pub encoding_format: Option<String>,
}

/// Parses a JSON body into `T`: malformed JSON and wrong types are a 400 naming the
/// problem (serde's message carries the line, column and field).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON"
            }
            _ => "invalid request",
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

/// OpenAI's `finish_reason` for an Ember one.
pub fn finish_reason(finish: ember::FinishReason) -> &'static str {
    match finish {
        ember::FinishReason::Eos | ember::FinishReason::Stop => "stop",
        ember::FinishReason::Length | ember::FinishReason::Context => "length",
        ember::FinishReason::Cancelled => "cancelled",
    }
}

/// `usage`.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}
