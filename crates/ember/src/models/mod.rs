//! Model families, one file each, the traits the pipelines hold them by, and the registry
//! that maps the architecture a checkpoint declares to its family.
//!
//! Adding a decoder family: its file here (config, modules, `load`, `forward`, its GGUF
//! name table), an implementation of [`DecoderModel`] and [`LoadDecoder`], one entry in
//! [`Architecture::NAMES`] and one arm in [`Architecture::load_decoder`]. Families run for
//! another task (BERT: [`crate::Embedder`]; Whisper: [`crate::Transcriber`]) are loaded by
//! their pipeline, which checks [`Architecture::task`].

pub mod bert;
pub mod gemma3;
pub mod llama;
pub mod presets;
pub mod whisper;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::config::{AttentionImpl, ModelConfig};
use crate::error::{Error, Result};
use crate::format::ct2::Ct2File;
use crate::format::gguf::GgufFile;
use crate::format::safetensors::SafetensorsStore;
use crate::format::{Loader, TensorStore};
use crate::nn::kv_cache::KvCache;
use crate::source::{self, Checkpoint};
use crate::tokenizer::TextTokenizer;

/// How many positions' logits a decoder's forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (scoring, tests).
    All,
}

/// A loaded decoder-only language model, whatever its family: what [`crate::Engine`],
/// [`crate::Session`], the bench and the fuzz targets hold. Immutable; a sequence's state
/// lives in the [`KvCache`] passed in.
pub trait DecoderModel<B: Backend>: Send + Sync + std::fmt::Debug {
    /// The family's name, as reports print it (`llama`, `gemma3`).
    fn family(&self) -> &'static str;

    /// Vocabulary size (rows of the output projection).
    fn vocab_size(&self) -> usize;

    /// Number of weights on the device (a tied output projection counted once per copy).
    fn num_params(&self) -> usize;

    /// The weights the config declares, as the memory check before loading counted them;
    /// equal to [`DecoderModel::num_params`] once loaded.
    fn declared_params(&self) -> u128;

    /// Bytes the weights take on the device.
    fn weights_bytes(&self) -> usize;

    /// A KV cache for `batch` sequences of up to `capacity` positions.
    fn new_cache(&self, batch: usize, capacity: usize, device: &B::Device) -> KvCache<B>;

    /// Runs `tokens: [batch, seq]` at the positions the cache gives the step
    /// ([`KvCache::begin`]: after what it holds, or one token at a device-held position set
    /// by [`KvCache::next_at`], which is how a session records and replays decode steps),
    /// writing their keys and values to `cache`: logits `[batch, seq, vocab]`
    /// ([`Logits::All`]) or `[batch, 1, vocab]` ([`Logits::Last`]).
    fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        attention: AttentionImpl,
        logits: Logits,
    ) -> Result<Tensor<B, 3>>;
}

/// Token ids as a `[1, len]` tensor.
pub fn token_tensor<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let len = ids.len();
    Tensor::from_data(TensorData::new(ids, [1, len]), device)
}

/// The sizes of a decoder's config that loading needs before any weight is read.
pub trait DecoderConfig {
    /// Weights the model will hold (wide arithmetic: hostile sizes cannot overflow).
    fn param_count(&self) -> u128;
    /// Elements of a one-sequence KV cache (and position tables) for `positions` positions.
    fn context_elements(&self, positions: usize) -> u128;
    /// Context the model was trained for.
    fn max_position_embeddings(&self) -> usize;
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
}

/// How a decoder family reads its config and weights from each checkpoint format.
pub trait LoadDecoder<B: Backend>: DecoderModel<B> + Sized + 'static {
    /// The family's config (Hugging Face field names).
    type Config: DecoderConfig;
    /// The config from a GGUF file's `ARCH.*` metadata.
    fn config_from_gguf(file: &GgufFile) -> Result<Self::Config>;
    /// The config from `config.json` text.
    fn config_from_json(text: &str, path: &Path) -> Result<Self::Config>;
    /// The GGUF file's tensors under the Hugging Face names [`LoadDecoder::load`] asks for.
    fn gguf_store<'a>(file: &'a GgufFile, config: &Self::Config) -> Box<dyn TensorStore + 'a>;
    /// The family's chat format, for checkpoints that carry no template of their own.
    fn default_chat_template() -> Option<&'static str> {
        None
    }
    /// A synthetic model of this family (`preset:NAME`): its config and seeded random
    /// weights. Families without presets refuse.
    fn synthetic(name: &str) -> Result<(Self::Config, Box<dyn TensorStore>)> {
        Err(Error::Config {
            path: "model.source".into(),
            message: format!("preset:{name} is not a shape of this family"),
        })
    }
    /// Loads the weights; position tables cover `context` positions. The model runs the
    /// backend's fused ops the loader hands out ([`Loader::fused`]) where it has them.
    fn load(
        config: Self::Config,
        loader: &Loader<'_, B>,
        context: usize,
        device: &B::Device,
    ) -> Result<Self>;
}

/// The model families Ember implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama-family decoders (Llama 2/3, SmolLM2, ...; Qwen2 and Qwen3 as variants).
    Llama,
    /// Gemma 3 decoders (text).
    Gemma3,
    /// BERT encoders (`ember embed`, [`crate::Embedder`]).
    Bert,
    /// Whisper speech recognizers (`ember transcribe`, [`crate::Transcriber`]).
    Whisper,
}

/// What a family is run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Text generation (`ember run`, [`crate::Engine`]).
    Generate,
    /// Sentence embeddings (`ember embed`, [`crate::Embedder`]).
    Embed,
    /// Speech to text (`ember transcribe`, [`crate::Transcriber`]).
    Transcribe,
}

impl Architecture {
    /// Names accepted in GGUF `general.architecture` or `config.json` `architectures[0]` /
    /// `model_type`.
    pub const NAMES: &'static [(&'static str, Architecture)] = &[
        ("llama", Architecture::Llama),
        ("LlamaForCausalLM", Architecture::Llama),
        ("qwen2", Architecture::Llama),
        ("Qwen2ForCausalLM", Architecture::Llama),
        ("qwen3", Architecture::Llama),
        ("Qwen3ForCausalLM", Architecture::Llama),
        ("gemma3", Architecture::Gemma3),
        ("gemma3_text", Architecture::Gemma3),
        ("Gemma3ForCausalLM", Architecture::Gemma3),
        ("bert", Architecture::Bert),
        ("BertModel", Architecture::Bert),
        ("BertForMaskedLM", Architecture::Bert),
        ("whisper", Architecture::Whisper),
        ("WhisperForConditionalGeneration", Architecture::Whisper),
        // CTranslate2's specification name (model.bin).
        ("WhisperSpec", Architecture::Whisper),
    ];

    /// The family of a checkpoint's declared architecture; an unknown name is an error that
    /// lists the supported ones.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| Error::UnsupportedArchitecture {
                found: name.into(),
                supported: Self::NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// What the family is run for.
    pub fn task(self) -> Task {
        match self {
            Architecture::Llama | Architecture::Gemma3 => Task::Generate,
            Architecture::Bert => Task::Embed,
            Architecture::Whisper => Task::Transcribe,
        }
    }

    /// Fails unless the family is run for `want`, saying which command runs it.
    pub fn expect_task(self, want: Task, path: &Path) -> Result<()> {
        if self.task() == want {
            return Ok(());
        }
        let what = match self.task() {
            Task::Generate => "a decoder (text generation): run it with `ember run`",
            Task::Embed => "an encoder (embeddings): run it with `ember embed`",
            Task::Transcribe => "a speech recognizer: run it with `ember transcribe`",
        };
        Err(Error::model(path, format!("this model is {what}")))
    }

    /// Runs `job` with this family's model type: the one place a family's name becomes
    /// its type.
    pub fn load_decoder<B: Backend, J: DecoderJob<B>>(self, job: J) -> Result<J::Output> {
        match self {
            Architecture::Llama => job.run::<llama::Llama<B>>(),
            Architecture::Gemma3 => job.run::<gemma3::Gemma3<B>>(),
            Architecture::Bert => Err(Error::model(
                job.path(),
                "this model is an encoder (embeddings): run it with `ember embed`",
            )),
            Architecture::Whisper => Err(Error::model(
                job.path(),
                "this model is a speech recognizer: run it with `ember transcribe`",
            )),
        }
    }
}

/// Work generic over a decoder family, run by [`Architecture::load_decoder`] with the
/// family's model type.
pub trait DecoderJob<B: Backend> {
    /// What the job returns.
    type Output;
    /// The checkpoint, for messages.
    fn path(&self) -> &Path;
    /// Runs with family `M`.
    fn run<M: LoadDecoder<B>>(self) -> Result<Self::Output>;
}

/// The architecture a Hugging Face `config.json` declares: `architectures[0]`, else
/// `model_type`.
pub fn declared_name(config_json: &serde_json::Value) -> Option<&str> {
    config_json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .or_else(|| config_json.get("model_type").and_then(|a| a.as_str()))
}

/// A family's `ARCH.*` GGUF metadata, read with errors that name the file and the key: what
/// every family's `from_gguf` reads.
pub struct GgufKeys<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl<'a> GgufKeys<'a> {
    /// The keys of `file`'s declared architecture.
    pub fn new(file: &'a GgufFile) -> Result<Self> {
        let arch = file
            .get_str("general.architecture")
            .map_err(|e| Self::error_in(file, e))?;
        Ok(Self { file, arch })
    }

    /// The declared architecture.
    pub fn arch(&self) -> &'a str {
        self.arch
    }

    /// `ARCH.name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }

    /// A reader error, naming the file.
    pub fn error(&self, e: crate::format::gguf::GgufError) -> Error {
        Self::error_in(self.file, e)
    }

    fn error_in(file: &GgufFile, e: crate::format::gguf::GgufError) -> Error {
        Error::Gguf {
            path: file.path().into(),
            error: e,
        }
    }

    /// `ARCH.name` as a size; an error when absent or too large.
    pub fn usize(&self, name: &str) -> Result<usize> {
        let key = self.key(name);
        let v = self.file.get_u64(&key).map_err(|e| self.error(e))?;
        usize::try_from(v)
            .map_err(|_| Error::model(self.file.path(), format!("{key} = {v} is too large")))
    }

    /// `ARCH.name` as a float; an error when absent.
    pub fn f64(&self, name: &str) -> Result<f64> {
        self.file
            .get_f64(&self.key(name))
            .map_err(|e| self.error(e))
    }

    /// The vocabulary: rows of `token_embd.weight`.
    pub fn vocab_size(&self) -> Result<usize> {
        let embed = self
            .file
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor {
                path: self.file.path().into(),
                name: "token_embd.weight".into(),
            })?;
        Ok(embed.shape().first().copied().unwrap_or(0))
    }
}

/// A checkpoint opened far enough to know its family: the first step every load shares.
pub struct Opened {
    /// Where it is on disk.
    pub checkpoint: Checkpoint,
    /// The family it declares.
    pub architecture: Architecture,
    /// The format's handle.
    pub format: Format,
}

/// A checkpoint's format, opened.
pub enum Format {
    /// A GGUF file, its metadata and tensor index read.
    Gguf(GgufFile),
    /// A Hugging Face directory and its `config.json` text.
    HfDir {
        /// The directory.
        dir: PathBuf,
        /// Its `config.json`.
        config_path: PathBuf,
        /// The text of `config.json`.
        config_text: String,
    },
    /// A synthetic Llama-shaped model (`preset:NAME`).
    Synthetic(String),
    /// A CTranslate2 directory: `model.bin` read and validated, beside `config.json` and
    /// `tokenizer.json`.
    Ct2 {
        /// The directory.
        dir: PathBuf,
        /// Its `model.bin`.
        file: Ct2File,
    },
}

impl Opened {
    /// Resolves `model.source` (fetching it if needed) and reads which family it declares.
    pub fn open(model: &ModelConfig) -> Result<Self> {
        let checkpoint = source::resolve(model)?;
        let (architecture, format) = match &checkpoint {
            Checkpoint::Gguf(path) => {
                let file = GgufFile::open(path).map_err(|e| Error::Gguf {
                    path: path.clone(),
                    error: e,
                })?;
                let name = file
                    .get_str("general.architecture")
                    .map_err(|e| Error::Gguf {
                        path: path.clone(),
                        error: e,
                    })?;
                (Architecture::from_name(name)?, Format::Gguf(file))
            }
            Checkpoint::HfDir(dir) if dir.join("model.bin").is_file() => {
                let path = dir.join("model.bin");
                let file = Ct2File::open(&path).map_err(|error| Error::Ct2 {
                    path: path.clone(),
                    error,
                })?;
                let architecture = Architecture::from_name(file.spec())?;
                let format = Format::Ct2 {
                    dir: dir.clone(),
                    file,
                };
                (architecture, format)
            }
            Checkpoint::HfDir(dir) => {
                let config_path = dir.join("config.json");
                let config_text =
                    std::fs::read_to_string(&config_path).map_err(Error::io(&config_path))?;
                let json: serde_json::Value = serde_json::from_str(&config_text)
                    .map_err(|e| Error::model(&config_path, format!("invalid JSON: {e}")))?;
                let name = declared_name(&json).ok_or_else(|| {
                    Error::model(&config_path, "no `architectures` or `model_type`")
                })?;
                let format = Format::HfDir {
                    dir: dir.clone(),
                    config_path: config_path.clone(),
                    config_text,
                };
                (Architecture::from_name(name)?, format)
            }
            Checkpoint::Synthetic(path) => {
                let name = path.to_string_lossy();
                let name = name.trim_start_matches("preset:").to_string();
                (Architecture::Llama, Format::Synthetic(name))
            }
        };
        Ok(Self {
            checkpoint,
            architecture,
            format,
        })
    }

    /// A decoder family's config, tokenizer and tensor store from this checkpoint.
    pub fn decoder_parts<B: Backend, M: LoadDecoder<B>>(
        &self,
    ) -> Result<(M::Config, TextTokenizer, Box<dyn TensorStore + '_>)> {
        let (config, tokenizer, store) = self.decoder_parts_unchecked::<B, M>()?;
        let vocab = config.vocab_size();
        if let Some(&bad) = tokenizer.eos_ids().iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::model(
                self.checkpoint.path(),
                format!(
                    "end-of-sequence token id {bad} is outside the model's vocabulary of \
                     {vocab} tokens: generation could never stop on it"
                ),
            ));
        }
        Ok((config, tokenizer, store))
    }

    fn decoder_parts_unchecked<B: Backend, M: LoadDecoder<B>>(
        &self,
    ) -> Result<(M::Config, TextTokenizer, Box<dyn TensorStore + '_>)> {
        match &self.format {
            Format::Gguf(file) => {
                let config = M::config_from_gguf(file)?;
                let tokenizer =
                    TextTokenizer::from_gguf(file)?.or_chat_template(M::default_chat_template());
                let store = M::gguf_store(file, &config);
                Ok((config, tokenizer, store))
            }
            Format::HfDir {
                dir,
                config_path,
                config_text,
            } => {
                let config = M::config_from_json(config_text, config_path)?;
                let tokenizer =
                    TextTokenizer::from_hf_dir(dir)?.or_chat_template(M::default_chat_template());
                let store: Box<dyn TensorStore> = Box::new(SafetensorsStore::open(dir)?);
                Ok((config, tokenizer, store))
            }
            Format::Ct2 { file, .. } => Err(Error::model(
                file.path(),
                format!(
                    "a CTranslate2 {} checkpoint is not a text decoder Ember runs",
                    file.spec()
                ),
            )),
            Format::Synthetic(name) => {
                let (config, store) = M::synthetic(name)?;
                let tokenizer = TextTokenizer::synthetic(config.vocab_size())?;
                Ok((config, tokenizer, store))
            }
        }
    }
}

/// Fails before anything is allocated when `elements` of `dtype_size` bytes cannot fit in
/// the memory available to this process, on devices that use host memory.
pub fn ensure_fits(device: &str, what: &str, elements: u128, dtype_size: usize) -> Result<()> {
    if crate::memory::uses_host_memory(device) {
        let needed = elements * dtype_size as u128;
        crate::memory::ensure_fits(what, needed, crate::memory::available_bytes())?;
    }
    Ok(())
}
