//! [`Embedder`]: a loaded BERT encoder with its tokenizer and the pooling, dense layers and
//! normalization that the checkpoint's sentence-transformers files declare (`modules.json`,
//! `1_Pooling/config.json`, `2_Dense/config.json` and its weights,
//! `sentence_bert_config.json`). A module Ember does not implement is an error at load.
//!
//! Truncation policy: each text is cut to the directory's `max_seq_length` tokens (else the
//! model's `max_position_embeddings`), `[CLS]` and `[SEP]` included, as sentence-transformers
//! does; [`Embedder::embed`] reports how many texts were cut.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::Deserialize;

use crate::config::{AttentionImpl, EngineConfig};
use crate::engine::RuntimeInfo;
use crate::error::{Error, Result};
use crate::format::safetensors::SafetensorsStore;
use crate::format::Loader;
use crate::models::bert::{Bert, BertConfig};
use crate::models::{ensure_fits, Format, Opened, Task};
use crate::source::Checkpoint;

/// How token vectors become one text vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the text's tokens (padding excluded).
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
    /// Per-dimension max over the text's tokens.
    Max,
}

/// Embeddings of a batch, and how many texts were truncated.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Texts longer than the maximum sequence length (cut).
    pub truncated: usize,
}

/// A loaded encoder; immutable after load, shareable between threads.
#[derive(Debug)]
pub struct Embedder<B: Backend> {
    model: Bert<B>,
    tokenizer: tokenizers::Tokenizer,
    pooling: Pooling,
    /// The modules after pooling, in order.
    after_pooling: Vec<Step>,
    normalize: bool,
    max_len: usize,
    device: B::Device,
    runtime: RuntimeInfo,
    attention: AttentionImpl,
    checkpoint: Checkpoint,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::model(path, format!("invalid JSON: {e}")))
}

/// A sentence-transformers module after pooling.
#[derive(Debug, Clone)]
enum Step {
    Dense(Dense),
    /// L2 normalization.
    Normalize,
}

/// A sentence-transformers `Dense` module: `activation(weight · x + bias)`, on the host
/// (a few hundred by a few hundred per text).
#[derive(Debug, Clone)]
struct Dense {
    /// `[out_features, in_features]`, row-major.
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    in_features: usize,
    out_features: usize,
    activation: Activation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    Identity,
    Tanh,
    Relu,
    Sigmoid,
}

/// `{in_features, out_features, bias, activation_function}` of a Dense module's
/// `config.json`, with sentence-transformers' defaults.
#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default = "tanh")]
    activation_function: String,
}

fn yes() -> bool {
    true
}

fn tanh() -> String {
    "torch.nn.modules.activation.Tanh".into()
}

impl Dense {
    /// Reads a Dense module's `config.json` and `model.safetensors` (`linear.weight`,
    /// `linear.bias`) from `dir`.
    fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let Some(config) = read_json::<DenseConfig>(&config_path)? else {
            return Err(Error::model(dir, "the Dense module has no config.json"));
        };
        let name = config
            .activation_function
            .rsplit('.')
            .next()
            .unwrap_or_default();
        let activation = match name {
            "Identity" => Activation::Identity,
            "Tanh" => Activation::Tanh,
            "ReLU" => Activation::Relu,
            "Sigmoid" => Activation::Sigmoid,
            _ => {
                return Err(Error::model(
                    &config_path,
                    format!(
                    "unsupported Dense activation `{}` (supported: Identity, Tanh, ReLU, Sigmoid)",
                    config.activation_function
                ),
                ))
            }
        };
        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            return Err(Error::model(
                dir,
                "the Dense module's weights must be in model.safetensors (a pytorch_model.bin \
                 cannot be read; convert it with safetensors)",
            ));
        }
        let bytes = std::fs::read(&weights_path).map_err(Error::io(&weights_path))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::model(&weights_path, format!("invalid safetensors: {e}")))?;
        let (rows, cols) = (config.out_features, config.in_features);
        let weight = read_f32(&file, &weights_path, "linear.weight", &[rows, cols])?;
        let bias = if config.bias {
            Some(read_f32(&file, &weights_path, "linear.bias", &[rows])?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            in_features: cols,
            out_features: rows,
            activation,
        })
    }

    /// `activation(weight · x + bias)`.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.in_features)
            .enumerate()
            .map(|(o, row)| {
                let dot: f64 = row.iter().zip(x).map(|(w, v)| *w as f64 * *v as f64).sum();
                let y = dot + self.bias.as_ref().map_or(0.0, |b| b[o] as f64);
                (match self.activation {
                    Activation::Identity => y,
                    Activation::Tanh => y.tanh(),
                    Activation::Relu => y.max(0.0),
                    Activation::Sigmoid => 1.0 / (1.0 + (-y).exp()),
                }) as f32
            })
            .collect()
    }
}

/// Tensor `name` of a safetensors file (F32, F16 or BF16) as f32, checked against `shape`.
fn read_f32(
    file: &safetensors::SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let tensor = file.tensor(name).map_err(|_| Error::MissingTensor {
        path: path.into(),
        name: name.into(),
    })?;
    if tensor.shape() != shape {
        return Err(Error::TensorShape {
            path: path.into(),
            name: name.into(),
            expected: shape.to_vec(),
            found: tensor.shape().to_vec(),
        });
    }
    let data = tensor.data();
    let values = match tensor.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::model(
                path,
                format!("tensor `{name}` is {other:?}; expected F32, F16 or BF16"),
            ))
        }
    };
    Ok(values)
}

/// Pooling and the modules after it from the sentence-transformers files in `dir` (mean
/// pooling without normalization when there are none).
fn pooling_of(dir: &Path, hidden: usize) -> Result<(Pooling, Vec<Step>)> {
    let Some(modules) = read_json::<Vec<Module>>(&dir.join("modules.json"))? else {
        tracing::warn!(
            "{}: no modules.json; using mean pooling without normalization",
            dir.display()
        );
        return Ok((Pooling::Mean, Vec::new()));
    };
    let kind = |m: &Module| m.kind.rsplit('.').next().unwrap_or_default().to_string();
    let mut after_pooling = Vec::new();
    let mut dim = hidden;
    for (i, m) in modules.iter().enumerate() {
        match kind(m).as_str() {
            "Transformer" if i == 0 => {}
            "Pooling" => {}
            "Normalize" => after_pooling.push(Step::Normalize),
            "Dense" => {
                let dense = Dense::load(&dir.join(&m.path))?;
                if dense.in_features != dim {
                    return Err(Error::model(
                        dir.join(&m.path),
                        format!(
                            "the Dense module takes {} features but the vectors before it have {dim}",
                            dense.in_features
                        ),
                    ));
                }
                dim = dense.out_features;
                after_pooling.push(Step::Dense(dense));
            }
            _ => {
                return Err(Error::model(
                    dir.join("modules.json"),
                    format!(
                        "module `{}` ({}) is not supported (supported: a first Transformer, \
                         then Pooling, Dense, Normalize)",
                        m.kind, m.path
                    ),
                ))
            }
        }
    }
    let pooling =
        match modules.iter().find(|m| m.kind.ends_with(".Pooling")) {
            None => Pooling::Cls,
            Some(m) => {
                let path = dir.join(&m.path).join("config.json");
                let c: PoolingConfig = read_json(&path)?.unwrap_or_default();
                match (
                    c.pooling_mode_mean_tokens,
                    c.pooling_mode_cls_token,
                    c.pooling_mode_max_tokens,
                    c.pooling_mode_mean_sqrt_len_tokens,
                ) {
                    (true, false, false, false) => Pooling::Mean,
                    (false, true, false, false) => Pooling::Cls,
                    (false, false, true, false) => Pooling::Max,
                    _ => return Err(Error::model(
                        &path,
                        "unsupported pooling: exactly one of mean, cls or max tokens is supported",
                    )),
                }
            }
        };
    Ok((pooling, after_pooling))
}

impl<B: Backend> Embedder<B> {
    /// Fetches (if needed) and loads the encoder of `config` onto `device`.
    pub fn load(config: &EngineConfig, device: &B::Device, runtime: RuntimeInfo) -> Result<Self> {
        let dtype = runtime.dtype.to_burn().ok_or_else(|| {
            Error::Backend("the backend must resolve dtype = \"auto\" before loading".into())
        })?;
        let opened = Opened::open(&config.model)?;
        opened
            .architecture
            .expect_task(Task::Embed, opened.checkpoint.path())?;
        let Format::HfDir {
            dir,
            config_path: path,
            config_text: text,
        } = &opened.format
        else {
            return Err(Error::model(
                opened.checkpoint.path(),
                "an encoder loads from a Hugging Face directory (config.json, model.safetensors, tokenizer.json)",
            ));
        };
        let checkpoint = opened.checkpoint.clone();
        let model_config = BertConfig::from_json(text, path)?;
        #[derive(Deserialize)]
        struct SbertConfig {
            max_seq_length: Option<usize>,
        }
        let declared = read_json::<SbertConfig>(&dir.join("sentence_bert_config.json"))?
            .and_then(|c| c.max_seq_length);
        let max_len = declared
            .unwrap_or(model_config.max_position_embeddings)
            .min(model_config.max_position_embeddings);
        let (pooling, after_pooling) = pooling_of(dir, model_config.hidden_size)?;
        let normalize = matches!(after_pooling.last(), Some(Step::Normalize));
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(Error::model(dir, "tokenizer.json is missing"));
        }
        let mut tokenizer = crate::tokenizer::read_tokenizer_json(&tok_path)?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(format!("truncation: {e}")))?;
        let params = model_config.param_count();
        let what = format!(
            "{} ({params} parameters in {})",
            dir.display(),
            runtime.dtype
        );
        ensure_fits(&runtime.device, &what, params, dtype.size())?;
        let store = SafetensorsStore::open(dir)?;
        let mut progress = |_, _| {};
        let loader = Loader::<B>::new(&store, device, dtype, &mut progress);
        let model = Bert::load(model_config, &loader)?;
        loader.finish()?;
        Ok(Self {
            model,
            tokenizer,
            pooling,
            after_pooling,
            normalize,
            max_len,
            device: device.clone(),
            runtime,
            attention: config.backend.attention,
            checkpoint,
        })
    }

    /// Backend, device and dtype.
    pub fn runtime(&self) -> &RuntimeInfo {
        &self.runtime
    }

    /// The directory the model came from.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Length of each vector (the last Dense module's outputs, else the hidden size).
    pub fn dim(&self) -> usize {
        self.after_pooling
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::Dense(d) => Some(d.out_features),
                Step::Normalize => None,
            })
            .unwrap_or(self.model.config().hidden_size)
    }

    /// Tokens a text is cut to.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Pooling and whether vectors are L2-normalized last.
    pub fn pooling(&self) -> (Pooling, bool) {
        (self.pooling, self.normalize)
    }

    /// The encoder.
    pub fn model(&self) -> &Bert<B> {
        &self.model
    }

    /// The token ids a text is embedded from (special tokens added, truncated).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeds `texts` as one padded batch.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        if texts.is_empty() {
            return Ok(Embeddings {
                vectors: Vec::new(),
                truncated: 0,
            });
        }
        let mut rows = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for text in texts {
            let enc = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            truncated += usize::from(!enc.get_overflowing().is_empty());
            rows.push(enc.get_ids().to_vec());
        }
        let batch = rows.len();
        let seq = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let vocab = self.model.config().vocab_size as u32;
        let mut flat = Vec::with_capacity(batch * seq);
        for row in &rows {
            if let Some(&bad) = row.iter().find(|&&id| id >= vocab) {
                return Err(Error::Tokenizer(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
            flat.extend(row.iter().map(|&id| i64::from(id)));
            flat.extend(std::iter::repeat_n(0i64, seq - row.len()));
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, seq]), &self.device);
        let hidden = self
            .model
            .forward(ids, &lengths, self.attention)
            .cast(FloatDType::F32);
        let h = self.model.config().hidden_size;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.slice([0..batch, 0..1, 0..h]).reshape([batch, h]),
            Pooling::Mean | Pooling::Max => {
                let cols = Tensor::<B, 1, Int>::arange(0..seq as i64, &self.device)
                    .reshape([1, seq])
                    .expand([batch, seq]);
                let lens: Vec<i64> = lengths.iter().map(|&l| l as i64).collect();
                let lens_t =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(lens, [batch]), &self.device);
                let padded = cols
                    .greater_equal(lens_t.clone().reshape([batch, 1]).expand([batch, seq]))
                    .reshape([batch, seq, 1])
                    .expand([batch, seq, h]);
                if self.pooling == Pooling::Mean {
                    let summed = hidden.mask_fill(padded, 0.0).sum_dim(1).reshape([batch, h]);
                    let counts = lens_t.float().cast(FloatDType::F32).reshape([batch, 1]);
                    summed.div(counts)
                } else {
                    hidden
                        .mask_fill(padded, f32::NEG_INFINITY)
                        .max_dim(1)
                        .reshape([batch, h])
                }
            }
        };
        let values: Vec<f32> = pooled.into_data().iter::<f32>().collect();
        let vectors = values
            .chunks_exact(h)
            .zip(texts)
            .map(|(v, text)| {
                let mut v = v.to_vec();
                for step in &self.after_pooling {
                    match step {
                        Step::Dense(dense) => v = dense.apply(&v),
                        Step::Normalize => {
                            let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                            let norm = norm.max(1e-12) as f32;
                            v.iter_mut().for_each(|x| *x /= norm);
                        }
                    }
                }
                Error::check_finite(&v, || {
                    let start: String = text.chars().take(40).collect();
                    format!("the embedding of the text {start:?}")
                })?;
                Ok(v)
            })
            .collect::<Result<_>>()?;
        Ok(Embeddings { vectors, truncated })
    }

    /// Embeds `texts` in batches of `batch_size`, reporting `(done, total)` after each.
    pub fn embed_batched(
        &self,
        texts: &[&str],
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Embeddings> {
        let mut out = Embeddings {
            vectors: Vec::with_capacity(texts.len()),
            truncated: 0,
        };
        for chunk in texts.chunks(batch_size.max(1)) {
            let e = self.embed(chunk)?;
            out.vectors.extend(e.vectors);
            out.truncated += e.truncated;
            progress(out.vectors.len(), texts.len());
        }
        Ok(out)
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}
