//! Whisper (speech to text): an audio encoder (two conv1d + GELU over the log-mel
//! spectrogram, sinusoidal positions, pre-norm transformer blocks) and a text decoder (learned
//! positions, self-attention over a KV cache, cross-attention to the encoder output whose keys
//! and values are computed once per 30 s window, output projection tied to the embedding).
//!
//! Loaded by Hugging Face names from a Hugging Face directory (`config.json`, safetensors) or
//! from CTranslate2's `model.bin` through [`Ct2WhisperStore`], which splits its fused q/k/v
//! and k/v projections and resolves its tied projection alias. Follows Hugging Face
//! transformers' `models/whisper/modeling_whisper.py` (and OpenAI's `whisper/model.py`).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::module::conv1d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use crate::config::AttentionImpl;
use crate::error::{Error, Result};
use crate::format::ct2::Ct2File;
use crate::format::{Loader, TensorStore};
use crate::models::Logits;
use crate::nn::attention::attend_all_with;
use crate::nn::kv_cache::KvCache;
use crate::nn::linear::{Embedding, Weight};
use crate::nn::Fused;
use crate::nn::{gelu_erf as gelu, layer_norm};

/// LayerNorm epsilon of every Whisper checkpoint.
const EPS: f64 = 1e-5;

/// A Whisper `config.json`, in Hugging Face's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhisperConfig {
    /// Vocabulary size (51864 English-only, 51865+ multilingual).
    pub vocab_size: usize,
    /// Mel bins of the input (80; 128 for large-v3).
    pub num_mel_bins: usize,
    /// Width of the hidden states.
    pub d_model: usize,
    /// Encoder blocks.
    pub encoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder blocks.
    pub decoder_layers: usize,
    /// Decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Encoder feed-forward width.
    pub encoder_ffn_dim: usize,
    /// Decoder feed-forward width.
    pub decoder_ffn_dim: usize,
    /// Encoder positions (1500: 30 s after the stride-2 convolution).
    #[serde(default = "default_source_positions")]
    pub max_source_positions: usize,
    /// Decoder positions (448).
    #[serde(default = "default_target_positions")]
    pub max_target_positions: usize,
    /// `gelu` is supported.
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Embeddings scaled by sqrt(d_model); `false` for every published checkpoint.
    #[serde(default)]
    pub scale_embedding: bool,
}

fn default_source_positions() -> usize {
    1500
}
fn default_target_positions() -> usize {
    448
}
fn default_activation() -> String {
    "gelu".into()
}

impl WhisperConfig {
    /// Parses and checks `config.json`.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::model(path, format!("invalid Whisper config.json: {e}")))?;
        config.validate(path)?;
        Ok(config)
    }

    /// The config a CTranslate2 `WhisperSpec` file implies: sizes from its tensors' shapes,
    /// heads from its `*/num_heads` settings; settings Ember does not implement are errors.
    pub fn from_ct2(file: &Ct2File) -> Result<Self> {
        let path = file.path();
        let err = |error| Error::Ct2 {
            path: path.into(),
            error,
        };
        let shape = |name: &str| -> Result<Vec<usize>> {
            file.variable(name)
                .map(|v| v.shape.clone())
                .ok_or_else(|| Error::MissingTensor {
                    path: path.into(),
                    name: name.into(),
                })
        };
        let dim = |name: &str, i: usize| -> Result<usize> {
            shape(name)?
                .get(i)
                .copied()
                .ok_or_else(|| Error::model(path, format!("`{name}` has no dimension {i}")))
        };
        let layers = |part: &str| {
            (0..)
                .take_while(|i| {
                    file.variable(&format!("{part}/layer_{i}/ffn/linear_0/weight"))
                        .is_some()
                })
                .count()
        };
        let setting = |name: &str, want: i64, what: &str| -> Result<()> {
            match file.scalar_int(name) {
                Ok(v) if v == want => Ok(()),
                Ok(v) => Err(Error::model(
                    path,
                    format!("`{name}` = {v}: {what} is not supported (expected {want})"),
                )),
                Err(crate::format::ct2::Ct2Error::Missing(_)) => Ok(()),
                Err(e) => Err(err(e)),
            }
        };
        setting("decoder/activation", 3, "an activation other than GELU")?;
        setting("decoder/pre_norm", 1, "a post-norm decoder")?;
        setting("decoder/alibi", 0, "ALiBi")?;
        setting("decoder/scale_embeddings", 0, "scaled embeddings")?;
        let d_model = dim("decoder/embeddings/weight", 1)?;
        let heads = |name: &str| -> Result<usize> {
            let n = file.scalar_int(name).map_err(err)?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| Error::model(path, format!("`{name}` = {n} is not a head count")))
        };
        let config = Self {
            vocab_size: dim("decoder/embeddings/weight", 0)?,
            num_mel_bins: dim("encoder/conv1/weight", 1)?,
            d_model,
            encoder_layers: layers("encoder"),
            encoder_attention_heads: heads("encoder/num_heads")?,
            decoder_layers: layers("decoder"),
            decoder_attention_heads: heads("decoder/num_heads")?,
            encoder_ffn_dim: dim("encoder/layer_0/ffn/linear_0/weight", 0)?,
            decoder_ffn_dim: dim("decoder/layer_0/ffn/linear_0/weight", 0)?,
            max_source_positions: dim("encoder/position_encodings/encodings", 0)?,
            max_target_positions: dim("decoder/position_encodings/encodings", 0)?,
            activation_function: "gelu".into(),
            scale_embedding: false,
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::model(path, m));
        for (what, d, h) in [
            ("encoder", self.d_model, self.encoder_attention_heads),
            ("decoder", self.d_model, self.decoder_attention_heads),
        ] {
            if d == 0 || h == 0 || !d.is_multiple_of(h) {
                return bad(format!(
                    "d_model {d} is not a positive multiple of the {what}'s {h} heads"
                ));
            }
        }
        if self.encoder_layers == 0 || self.decoder_layers == 0 {
            return bad("the encoder and the decoder need at least one layer each".into());
        }
        if self.vocab_size == 0
            || self.num_mel_bins == 0
            || self.encoder_ffn_dim == 0
            || self.decoder_ffn_dim == 0
            || self.max_target_positions < 4
        {
            return bad(
                "vocab_size, num_mel_bins, the ffn dims and max_target_positions must be positive"
                    .into(),
            );
        }
        // The encoder sees 3000 mel frames, 1500 positions after the stride-2 convolution.
        if self.max_source_positions != 1500 {
            return bad(format!(
                "max_source_positions is {}; Whisper's 30 s windows need 1500",
                self.max_source_positions
            ));
        }
        if !matches!(self.activation_function.as_str(), "gelu") {
            return bad(format!(
                "activation_function `{}` is not supported (gelu)",
                self.activation_function
            ));
        }
        if self.scale_embedding {
            return bad("scale_embedding = true is not supported".into());
        }
        Ok(())
    }

    /// Weights the model loads (wide arithmetic: hostile sizes cannot overflow).
    pub fn param_count(&self) -> u128 {
        let n = |x: usize| x as u128;
        let d = n(self.d_model);
        let attn = 4 * d * d + 3 * d + 2 * d;
        let ffn = |f: u128| 2 * d * f + f + d + 2 * d;
        let encoder = n(self.num_mel_bins) * d * 3
            + d
            + d * d * 3
            + d
            + n(self.max_source_positions) * d
            + n(self.encoder_layers) * (attn + ffn(n(self.encoder_ffn_dim)))
            + 2 * d;
        let decoder = n(self.vocab_size) * d
            + n(self.max_target_positions) * d
            + n(self.decoder_layers) * (2 * attn + ffn(n(self.decoder_ffn_dim)))
            + 2 * d;
        encoder + decoder
    }
}

/// Where a Hugging Face name's values are in a CTranslate2 file.
#[derive(Debug, Clone)]
struct Ct2Source {
    variable: String,
    /// Rows (first-dim entries) of the variable, for the parts of a fused projection.
    rows: Range<usize>,
    shape: Vec<usize>,
}

/// A CTranslate2 Whisper `model.bin` under Hugging Face names: fused q/k/v (self-attention)
/// and k/v (cross-attention) projections split, the tied projection (an alias) left to the
/// model, and the zero key biases CTranslate2 stores for Whisper's bias-free key projections
/// checked and dropped. Every variable of the file is accounted for: one that maps to no
/// Hugging Face name is an error at [`Ct2WhisperStore::new`].
pub struct Ct2WhisperStore<'a> {
    file: &'a Ct2File,
    names: HashMap<String, Ct2Source>,
}

/// Per-block part names: (CTranslate2, Hugging Face) for the LayerNorms and the
/// feed-forward block.
const CT2_BLOCK: &[(&str, &str)] = &[
    (
        "self_attention/layer_norm/gamma",
        "self_attn_layer_norm.weight",
    ),
    (
        "self_attention/layer_norm/beta",
        "self_attn_layer_norm.bias",
    ),
    (
        "attention/layer_norm/gamma",
        "encoder_attn_layer_norm.weight",
    ),
    ("attention/layer_norm/beta", "encoder_attn_layer_norm.bias"),
    ("ffn/layer_norm/gamma", "final_layer_norm.weight"),
    ("ffn/layer_norm/beta", "final_layer_norm.bias"),
    ("ffn/linear_0/weight", "fc1.weight"),
    ("ffn/linear_0/bias", "fc1.bias"),
    ("ffn/linear_1/weight", "fc2.weight"),
    ("ffn/linear_1/bias", "fc2.bias"),
    (
        "self_attention/linear_1/weight",
        "self_attn.out_proj.weight",
    ),
    ("self_attention/linear_1/bias", "self_attn.out_proj.bias"),
    ("attention/linear_0/weight", "encoder_attn.q_proj.weight"),
    ("attention/linear_0/bias", "encoder_attn.q_proj.bias"),
    ("attention/linear_2/weight", "encoder_attn.out_proj.weight"),
    ("attention/linear_2/bias", "encoder_attn.out_proj.bias"),
];

/// Outside the blocks: (CTranslate2, Hugging Face).
const CT2_TOP: &[(&str, &str)] = &[
    ("encoder/conv1/weight", "model.encoder.conv1.weight"),
    ("encoder/conv1/bias", "model.encoder.conv1.bias"),
    ("encoder/conv2/weight", "model.encoder.conv2.weight"),
    ("encoder/conv2/bias", "model.encoder.conv2.bias"),
    (
        "encoder/position_encodings/encodings",
        "model.encoder.embed_positions.weight",
    ),
    (
        "encoder/layer_norm/gamma",
        "model.encoder.layer_norm.weight",
    ),
    ("encoder/layer_norm/beta", "model.encoder.layer_norm.bias"),
    (
        "decoder/embeddings/weight",
        "model.decoder.embed_tokens.weight",
    ),
    (
        "decoder/position_encodings/encodings",
        "model.decoder.embed_positions.weight",
    ),
    (
        "decoder/layer_norm/gamma",
        "model.decoder.layer_norm.weight",
    ),
    ("decoder/layer_norm/beta", "model.decoder.layer_norm.bias"),
];

/// Settings stored as scalars, read by [`WhisperConfig::from_ct2`] or of no effect on the
/// computation (the alignment heads serve word timestamps).
const CT2_SETTINGS: &[&str] = &[
    "decoder/activation",
    "decoder/alibi",
    "decoder/alignment_heads",
    "decoder/alignment_layer",
    "decoder/num_heads",
    "decoder/pre_norm",
    "decoder/scale_embeddings",
    "decoder/start_from_zero_embedding",
    "encoder/num_heads",
    "encoder/activation",
    "encoder/pre_norm",
];

impl<'a> Ct2WhisperStore<'a> {
    /// The file's tensors under Hugging Face names; `d_model` sizes the fused parts.
    pub fn new(file: &'a Ct2File, d_model: usize) -> Result<Self> {
        let path = file.path();
        let mut names = HashMap::new();
        let mut add = |hf: String, variable: &str, rows: Option<Range<usize>>| -> Result<()> {
            let v = file
                .variable(variable)
                .ok_or_else(|| Error::MissingTensor {
                    path: path.into(),
                    name: variable.into(),
                })?;
            let mut shape = v.shape.clone();
            let rows = rows.unwrap_or(0..shape.first().copied().unwrap_or(1));
            match shape.first_mut() {
                Some(first) if rows.end <= *first => *first = rows.len(),
                _ => {
                    return Err(Error::model(
                        path,
                        format!(
                            "`{variable}` has shape {:?}, too small for a fused projection of {d_model}",
                            v.shape
                        ),
                    ))
                }
            }
            names.insert(
                hf,
                Ct2Source {
                    variable: variable.into(),
                    rows,
                    shape,
                },
            );
            Ok(())
        };
        let d = d_model;
        for v in file.variables() {
            let name = v.name.as_str();
            if CT2_SETTINGS.contains(&name) {
                continue;
            }
            if let Some((_, hf)) = CT2_TOP.iter().find(|(ct, _)| *ct == name) {
                add((*hf).into(), name, None)?;
                continue;
            }
            let unknown = || {
                Error::model(
                    path,
                    format!("variable `{name}` is not part of a Whisper model as Ember reads it"),
                )
            };
            let (part, rest) = name.split_once('/').ok_or_else(unknown)?;
            let (layer, inner) = rest.split_once('/').ok_or_else(unknown)?;
            let index: usize = layer
                .strip_prefix("layer_")
                .and_then(|i| i.parse().ok())
                .ok_or_else(unknown)?;
            let hf_part = match part {
                "encoder" | "decoder" => part,
                _ => return Err(unknown()),
            };
            let prefix = format!("model.{hf_part}.layers.{index}");
            let fused = |names: &[&str], bias: bool| -> Vec<(String, Range<usize>)> {
                names
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| !n.is_empty())
                    .map(|(i, n)| {
                        let kind = if bias { "bias" } else { "weight" };
                        (format!("{prefix}.{n}.{kind}"), i * d..(i + 1) * d)
                    })
                    .collect()
            };
            let parts = match inner {
                "self_attention/linear_0/weight" => fused(
                    &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                    false,
                ),
                "self_attention/linear_0/bias" => {
                    check_zero(file, name, d..2 * d)?;
                    fused(&["self_attn.q_proj", "", "self_attn.v_proj"], true)
                }
                "attention/linear_1/weight" if part == "decoder" => {
                    fused(&["encoder_attn.k_proj", "encoder_attn.v_proj"], false)
                }
                "attention/linear_1/bias" if part == "decoder" => {
                    check_zero(file, name, 0..d)?;
                    fused(&["", "encoder_attn.v_proj"], true)
                }
                _ => {
                    let (_, hf) = CT2_BLOCK
                        .iter()
                        .find(|(ct, _)| *ct == inner)
                        .ok_or_else(unknown)?;
                    vec![(
                        format!("{prefix}.{hf}"),
                        0..v.shape.first().copied().unwrap_or(1),
                    )]
                }
            };
            for (hf, rows) in parts {
                add(hf, name, Some(rows))?;
            }
        }
        Ok(Self { file, names })
    }
}

/// Fails unless the values `range` of bias `name` are zero (the key bias CTranslate2 stores
/// for Whisper's bias-free key projection; a non-zero one would be silently dropped).
fn check_zero(file: &Ct2File, name: &str, range: Range<usize>) -> Result<()> {
    let values = file.read_f32(name).map_err(|error| Error::Ct2 {
        path: file.path().into(),
        error,
    })?;
    let part = values.get(range.clone()).ok_or_else(|| {
        Error::model(
            file.path(),
            format!(
                "`{name}` has {} values, fewer than {}",
                values.len(),
                range.end
            ),
        )
    })?;
    if part.iter().any(|&x| x != 0.0) {
        return Err(Error::model(
            file.path(),
            format!("`{name}` has a non-zero key bias, which Whisper does not have"),
        ));
    }
    Ok(())
}

impl TensorStore for Ct2WhisperStore<'_> {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.names.get(name).map(|s| s.shape.clone())
    }

    fn read(&self, name: &str) -> Result<Option<Vec<f32>>> {
        let Some(source) = self.names.get(name) else {
            return Ok(None);
        };
        let values = self
            .file
            .read_f32(&source.variable)
            .map_err(|error| Error::Ct2 {
                path: self.file.path().into(),
                error,
            })?;
        let row: usize = source.shape.iter().skip(1).product();
        Ok(Some(
            values[source.rows.start * row..source.rows.end * row].to_vec(),
        ))
    }
}

/// A projection with an optional bias.
#[derive(Debug)]
struct Dense<B: Backend> {
    weight: Weight<B>,
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Dense<B> {
    fn load(
        loader: &Loader<'_, B>,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            weight: loader.weight(&format!("{name}.weight"), out, inp)?,
            bias: if bias {
                Some(loader.tensor(&format!("{name}.bias"), [out])?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let y = self.weight.forward(x);
        match &self.bias {
            Some(b) => y.add(b.clone().unsqueeze::<3>()),
            None => y,
        }
    }
}

#[derive(Debug)]
struct Norm<B: Backend> {
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
}

impl<B: Backend> Norm<B> {
    fn load(loader: &Loader<'_, B>, name: &str, d: usize) -> Result<Self> {
        Ok(Self {
            weight: loader.tensor(&format!("{name}.weight"), [d])?,
            bias: loader.tensor(&format!("{name}.bias"), [d])?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        layer_norm(x, &self.weight, &self.bias, EPS)
    }
}

/// Multi-head attention (`q_proj`, `k_proj` without bias, `v_proj`, `out_proj`).
#[derive(Debug)]
struct Attention<B: Backend> {
    q_proj: Dense<B>,
    k_proj: Dense<B>,
    v_proj: Dense<B>,
    out_proj: Dense<B>,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    fn load(loader: &Loader<'_, B>, name: &str, d: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            q_proj: Dense::load(loader, &format!("{name}.q_proj"), d, d, true)?,
            k_proj: Dense::load(loader, &format!("{name}.k_proj"), d, d, false)?,
            v_proj: Dense::load(loader, &format!("{name}.v_proj"), d, d, true)?,
            out_proj: Dense::load(loader, &format!("{name}.out_proj"), d, d, true)?,
            heads,
        })
    }

    /// `[batch, seq, d]` -> `[batch, heads, seq, head_dim]`.
    fn split(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, seq, d] = x.dims();
        x.reshape([batch, seq, self.heads, d / self.heads])
            .swap_dims(1, 2)
    }

    /// Keys and values of `x` (`[batch, heads, seq, head_dim]` each).
    fn keys_values(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (
            self.split(self.k_proj.forward(x.clone())),
            self.split(self.v_proj.forward(x)),
        )
    }

    /// The output for queries from `x` over keys and values `k, v`, hidden where `bias` is
    /// `-inf`.
    fn attend(
        &self,
        x: Tensor<B, 3>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<&Tensor<B, 4>>,
        imp: AttentionImpl,
        fused: Option<&Fused<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, d] = x.dims();
        let q = self.split(self.q_proj.forward(x));
        let out = attend_all_with(q, k, v, bias, imp, fused.map(Fused::ops));
        // [batch, heads, seq, head_dim] -> [batch, seq, d]
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([batch, seq, d]))
    }
}

#[derive(Debug)]
struct Mlp<B: Backend> {
    fc1: Dense<B>,
    fc2: Dense<B>,
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

#[derive(Debug)]
struct EncoderLayer<B: Backend> {
    self_attn: Attention<B>,
    self_attn_layer_norm: Norm<B>,
    mlp: Mlp<B>,
    final_layer_norm: Norm<B>,
}

#[derive(Debug)]
struct DecoderLayer<B: Backend> {
    self_attn: Attention<B>,
    self_attn_layer_norm: Norm<B>,
    encoder_attn: Attention<B>,
    encoder_attn_layer_norm: Norm<B>,
    mlp: Mlp<B>,
    final_layer_norm: Norm<B>,
}

/// The cross-attention keys and values of one window's encoder output, per decoder layer,
/// `[1, heads, 1500, head_dim]` each: computed once per window ([`Whisper::cross_attention`]).
#[derive(Debug, Clone)]
pub struct CrossAttention<B: Backend> {
    layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
}

/// A loaded Whisper model. Immutable; a window's state lives in the [`KvCache`] and the
/// [`CrossAttention`] passed in.
#[derive(Debug)]
pub struct Whisper<B: Backend> {
    config: WhisperConfig,
    conv1: (Tensor<B, 3>, Tensor<B, 1>),
    conv2: (Tensor<B, 3>, Tensor<B, 1>),
    encoder_positions: Tensor<B, 2>,
    encoder_layers: Vec<EncoderLayer<B>>,
    encoder_norm: Norm<B>,
    embed_tokens: Embedding<B>,
    decoder_positions: Tensor<B, 2>,
    decoder_layers: Vec<DecoderLayer<B>>,
    decoder_norm: Norm<B>,
    /// The output projection (tied to the embedding unless the checkpoint has `proj_out`).
    output: Weight<B>,
    attention: AttentionImpl,
    fused: Option<Fused<B>>,
}

impl<B: Backend> Whisper<B> {
    /// Loads the weights by their Hugging Face names (`model.encoder.*`, `model.decoder.*`,
    /// `proj_out.weight` if present).
    pub fn load(
        config: WhisperConfig,
        loader: &Loader<'_, B>,
        attention: AttentionImpl,
    ) -> Result<Self> {
        let c = &config;
        let d = c.d_model;
        let conv = |name: &str, inp: usize| -> Result<(Tensor<B, 3>, Tensor<B, 1>)> {
            Ok((
                loader.tensor(&format!("model.encoder.{name}.weight"), [d, inp, 3])?,
                loader.tensor(&format!("model.encoder.{name}.bias"), [d])?,
            ))
        };
        let mlp = |p: &str, f: usize| -> Result<Mlp<B>> {
            Ok(Mlp {
                fc1: Dense::load(loader, &format!("{p}.fc1"), f, d, true)?,
                fc2: Dense::load(loader, &format!("{p}.fc2"), d, f, true)?,
            })
        };
        let encoder_layers = (0..c.encoder_layers)
            .map(|i| {
                let p = format!("model.encoder.layers.{i}");
                Ok(EncoderLayer {
                    self_attn: Attention::load(
                        loader,
                        &format!("{p}.self_attn"),
                        d,
                        c.encoder_attention_heads,
                    )?,
                    self_attn_layer_norm: Norm::load(
                        loader,
                        &format!("{p}.self_attn_layer_norm"),
                        d,
                    )?,
                    mlp: mlp(&p, c.encoder_ffn_dim)?,
                    final_layer_norm: Norm::load(loader, &format!("{p}.final_layer_norm"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder_layers = (0..c.decoder_layers)
            .map(|i| {
                let p = format!("model.decoder.layers.{i}");
                let heads = c.decoder_attention_heads;
                Ok(DecoderLayer {
                    self_attn: Attention::load(loader, &format!("{p}.self_attn"), d, heads)?,
                    self_attn_layer_norm: Norm::load(
                        loader,
                        &format!("{p}.self_attn_layer_norm"),
                        d,
                    )?,
                    encoder_attn: Attention::load(loader, &format!("{p}.encoder_attn"), d, heads)?,
                    encoder_attn_layer_norm: Norm::load(
                        loader,
                        &format!("{p}.encoder_attn_layer_norm"),
                        d,
                    )?,
                    mlp: mlp(&p, c.decoder_ffn_dim)?,
                    final_layer_norm: Norm::load(loader, &format!("{p}.final_layer_norm"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = "model.decoder.embed_tokens.weight";
        let embed_tokens = loader.embedding(embed, c.vocab_size, d)?;
        let output = if loader.contains("proj_out.weight") {
            loader.weight("proj_out.weight", c.vocab_size, d)?
        } else {
            match embed_tokens.tied() {
                Some(tied) => tied,
                None => loader.weight(embed, c.vocab_size, d)?,
            }
        };
        Ok(Self {
            conv1: conv("conv1", c.num_mel_bins)?,
            conv2: conv("conv2", d)?,
            encoder_positions: loader.tensor(
                "model.encoder.embed_positions.weight",
                [c.max_source_positions, d],
            )?,
            encoder_layers,
            encoder_norm: Norm::load(loader, "model.encoder.layer_norm", d)?,
            embed_tokens,
            decoder_positions: loader.tensor(
                "model.decoder.embed_positions.weight",
                [c.max_target_positions, d],
            )?,
            decoder_layers,
            decoder_norm: Norm::load(loader, "model.decoder.layer_norm", d)?,
            output,
            attention,
            fused: loader.fused(),
            config,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// Whether the vocabulary holds the language tokens (multilingual checkpoints).
    pub fn is_multilingual(&self) -> bool {
        self.config.vocab_size >= 51865
    }

    /// The encoder output `[1, 1500, d_model]` of one 30 s log-mel window `mel: [1, n_mels,
    /// 3000]` (in the model's dtype).
    pub fn encode(&self, mel: Tensor<B, 3>) -> Tensor<B, 3> {
        let conv = |x, (w, b): &(Tensor<B, 3>, Tensor<B, 1>), stride| {
            gelu(conv1d(
                x,
                w.clone(),
                Some(b.clone()),
                ConvOptions::new([stride], [1], [1], 1),
            ))
        };
        let x = conv(mel, &self.conv1, 1);
        let x = conv(x, &self.conv2, 2);
        // [1, d, positions] -> [1, positions, d]
        let x = x.swap_dims(1, 2);
        let [_, positions, d] = x.dims();
        let mut x = x.add(
            self.encoder_positions
                .clone()
                .slice([0..positions, 0..d])
                .unsqueeze::<3>(),
        );
        let fused = self.fused.as_ref();
        for layer in &self.encoder_layers {
            let h = layer.self_attn_layer_norm.forward(x.clone());
            let (k, v) = layer.self_attn.keys_values(h.clone());
            x = x.add(layer.self_attn.attend(h, k, v, None, self.attention, fused));
            let h = layer.final_layer_norm.forward(x.clone());
            x = x.add(layer.mlp.forward(h));
        }
        self.encoder_norm.forward(x)
    }

    /// Every decoder layer's cross-attention keys and values of one window's encoder output.
    pub fn cross_attention(&self, encoded: &Tensor<B, 3>) -> CrossAttention<B> {
        CrossAttention {
            layers: self
                .decoder_layers
                .iter()
                .map(|l| l.encoder_attn.keys_values(encoded.clone()))
                .collect(),
        }
    }

    /// A self-attention cache for one sequence of up to `max_target_positions` tokens.
    pub fn new_cache(&self, device: &B::Device) -> KvCache<B> {
        let c = &self.config;
        let heads = c.decoder_attention_heads;
        KvCache::new(
            c.decoder_layers,
            1,
            heads,
            c.max_target_positions,
            c.d_model / heads,
            device,
            self.decoder_positions.dtype(),
        )
        .with_fused(self.fused.clone())
        .with_decode_window(1)
    }

    /// Runs `tokens` after what `cache` holds, attending to `cross`; writes their keys and
    /// values to `cache`. Logits `[1, seq, vocab]` ([`Logits::All`]) or `[1, 1, vocab]`
    /// ([`Logits::Last`]), in f32.
    pub fn decode(
        &self,
        tokens: &[u32],
        cross: &CrossAttention<B>,
        cache: &mut KvCache<B>,
        logits: Logits,
    ) -> Result<Tensor<B, 3>> {
        let seq = tokens.len();
        let start = cache.len();
        let d = self.config.d_model;
        let device = self.decoder_positions.device();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::Backend(format!(
                "token {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let step = cache.begin(seq)?;
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [seq]), &device);
        let positions = self
            .decoder_positions
            .clone()
            .slice([start..start + seq, 0..d]);
        let mut x = self
            .embed_tokens
            .lookup(ids)
            .add(positions)
            .unsqueeze::<3>();
        let dtype = x.dtype();
        let bias =
            (seq > 1 || step.visible() > start + seq).then(|| step.bias(None, dtype, &device));
        let fused = self.fused.as_ref();
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            let h = layer.self_attn_layer_norm.forward(x.clone());
            let (k, v) = layer.self_attn.keys_values(h.clone());
            let (k, v) = cache.update_and_fetch(&step, i, k, v)?;
            x = x.add(
                layer
                    .self_attn
                    .attend(h, k, v, bias.as_ref(), self.attention, fused),
            );
            let h = layer.encoder_attn_layer_norm.forward(x.clone());
            let (k, v) = cross.layers[i].clone();
            x = x.add(
                layer
                    .encoder_attn
                    .attend(h, k, v, None, self.attention, fused),
            );
            let h = layer.final_layer_norm.forward(x.clone());
            x = x.add(layer.mlp.forward(h));
        }
        cache.finish(&step);
        let x = match logits {
            Logits::All => x,
            Logits::Last => x.slice([0..1, seq - 1..seq, 0..d]),
        };
        let x = self.decoder_norm.forward(x);
        Ok(self.output.forward(x).cast(burn::tensor::FloatDType::F32))
    }

    /// Bytes the weights take on the device.
    pub fn weights_bytes(&self) -> usize {
        let dtype = self.decoder_positions.dtype().size();
        let tied_dense = !self.output.is_quantized();
        self.config.param_count() as usize * dtype
            + if tied_dense { self.output.bytes() } else { 0 }
    }
}
