//! [`Embedder`]: a loaded BERT encoder with its tokenizer and the pooling and normalization
//! that the checkpoint's sentence-transformers files declare (`modules.json`,
//! `1_Pooling/config.json`, `sentence_bert_config.json`).
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

/// Pooling and normalization from the sentence-transformers files in `dir` (mean pooling
/// without normalization when there are none).
fn pooling_of(dir: &Path) -> Result<(Pooling, bool)> {
    let Some(modules) = read_json::<Vec<Module>>(&dir.join("modules.json"))? else {
        tracing::warn!(
            "{}: no modules.json; using mean pooling without normalization",
            dir.display()
        );
        return Ok((Pooling::Mean, false));
    };
    let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
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
    Ok((pooling, normalize))
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
        let (pooling, normalize) = pooling_of(dir)?;
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

    /// Length of each vector.
    pub fn dim(&self) -> usize {
        self.model.config().hidden_size
    }

    /// Tokens a text is cut to.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Pooling and whether vectors are L2-normalized.
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
        let h = self.dim();
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
            .map(|v| {
                let mut v = v.to_vec();
                if self.normalize {
                    let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                    let norm = norm.max(1e-12) as f32;
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect();
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
