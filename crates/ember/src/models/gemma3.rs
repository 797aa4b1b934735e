//! Gemma 3 decoders (text): interleaved sliding-window and global attention layers with
//! their own RoPE bases, QK-norm, RMSNorm scaled by `1 + w` before and after attention and
//! MLP, a tanh-GELU gated MLP, embeddings scaled by `sqrt(hidden)`, a tied output.
//!
//! The residual stream is kept in f32 whatever the run's dtype: in Gemma 3 it grows past
//! f16's range (to ~1e5 in the 270M model's middle layers, measured), while what the norms
//! feed the projections stays small. Norms read it in f32 and hand the run's dtype on.
//!
//! Follows huggingface/transformers `src/transformers/models/gemma3/modeling_gemma3.py`
//! (`Gemma3TextModel`) and llama.cpp's `llm_build_gemma3` for the GGUF conventions.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use super::{DecoderConfig, DecoderModel, GgufKeys, LoadDecoder, Logits};
use crate::config::AttentionImpl;
use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use crate::format::gguf_store::{Fixes, GgufStore};
use crate::format::{Loader, TensorStore};
use crate::nn::attention::{attend_all_with, repeat_kv};
use crate::nn::kv_cache::{KvCache, Step};
use crate::nn::linear::{Embedding, Weight};
use crate::nn::rope::{inv_freq, rotate_with, Rope, RopeTables};
use crate::nn::{gated_linear, rms_norm_with, Fused, FusedOps, Gate};

/// A Gemma 3 text checkpoint's `config.json`, in Hugging Face's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base of the global (full-attention) layers.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RoPE base of the sliding-window layers.
    #[serde(default = "default_rope_local_base")]
    pub rope_local_base_freq: f64,
    /// RoPE scaling of the global layers (`{"rope_type": "linear", "factor": f}`).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Keys a sliding-window layer's query sees, itself included.
    pub sliding_window: usize,
    /// Per layer, `sliding_attention` or `full_attention`; absent: every
    /// `sliding_window_pattern`-th layer is global.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Period of the global layers when `layer_types` is absent.
    #[serde(default = "default_pattern")]
    pub sliding_window_pattern: usize,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f64,
    /// Context the model was trained for.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// `tanh` soft-capping of the output logits, when set.
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// `tanh` soft-capping of attention scores (Gemma 2; must be unset for Gemma 3).
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    /// Whether the output projection reuses the token embedding.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_rope_theta() -> f64 {
    1_000_000.0
}

fn default_rope_local_base() -> f64 {
    10_000.0
}

fn default_pattern() -> usize {
    6
}

fn default_true() -> bool {
    true
}

impl Gemma3Config {
    /// Whether layer `i` attends through a sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(types) => types.get(i).is_some_and(|t| t == "sliding_attention"),
            None => !(i + 1).is_multiple_of(self.sliding_window_pattern.max(1)),
        }
    }

    /// Parses `config.json` text (a `Gemma3ForCausalLM` / `gemma3_text` checkpoint).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::model(path, format!("invalid Gemma 3 config.json: {e}")))?;
        config.validate().map_err(|m| Error::model(path, m))?;
        Ok(config)
    }

    /// Reads the `gemma3.*` metadata of a GGUF file (llama.cpp's names; the sliding-window
    /// pattern and the local RoPE base are fixed there, as here).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let keys = GgufKeys::new(file)?;
        let heads = keys.usize("attention.head_count")?;
        let hidden_size = keys.usize("embedding_length")?;
        let head_dim = keys
            .usize("attention.key_length")
            .unwrap_or(hidden_size / heads.max(1));
        let rope_scaling = match file.get_str(&keys.key("rope.scaling.type")) {
            Ok("linear") => {
                let factor = keys.f64("rope.scaling.factor")?;
                Some(serde_json::json!({"rope_type": "linear", "factor": factor}))
            }
            _ => None,
        };
        let config = Self {
            hidden_size,
            intermediate_size: keys.usize("feed_forward_length")?,
            num_hidden_layers: keys.usize("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: keys.usize("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rms_norm_eps: keys.f64("attention.layer_norm_rms_epsilon")?,
            rope_theta: keys.f64("rope.freq_base").unwrap_or(default_rope_theta()),
            rope_local_base_freq: default_rope_local_base(),
            rope_scaling,
            sliding_window: keys.usize("attention.sliding_window")?,
            layer_types: None,
            sliding_window_pattern: default_pattern(),
            query_pre_attn_scalar: head_dim as f64,
            max_position_embeddings: keys.usize("context_length")?,
            vocab_size: keys.vocab_size()?,
            final_logit_softcapping: keys.f64("final_logit_softcapping").ok(),
            attn_logit_softcapping: keys.f64("attn_logit_softcapping").ok(),
            tie_word_embeddings: file.tensor("output.weight").is_none(),
        };
        config
            .validate()
            .map_err(|m| Error::model(file.path(), m))?;
        Ok(config)
    }

    /// Checks that the sizes are consistent; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("sliding_window", self.sliding_window),
            ("sliding_window_pattern", self.sliding_window_pattern),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.hidden_size > 1 << 16
            || self.intermediate_size > 1 << 18
            || self.num_hidden_layers > 1024
            || self.head_dim > 1 << 12
            || self.num_attention_heads > 1 << 10
            || self.vocab_size > 1 << 22
        {
            return Err(format!(
                "implausible sizes (hidden_size {}, intermediate_size {}, layers {}, heads {}, \
                 head_dim {}, vocab_size {})",
                self.hidden_size,
                self.intermediate_size,
                self.num_hidden_layers,
                self.num_attention_heads,
                self.head_dim,
                self.vocab_size
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        let positive_f = [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
            ("rope_local_base_freq", self.rope_local_base_freq),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
        ];
        for (name, value) in positive_f {
            if !(value > 0.0 && value.is_finite()) {
                return Err(format!("{name} must be positive, got {value}"));
            }
        }
        if let Some(cap) = self.final_logit_softcapping {
            if !(cap > 0.0 && cap.is_finite()) {
                return Err(format!(
                    "final_logit_softcapping must be positive, got {cap}"
                ));
            }
        }
        if self.attn_logit_softcapping.is_some() {
            return Err("attn_logit_softcapping is not supported (Gemma 2's)".into());
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            if let Some(bad) = types
                .iter()
                .find(|t| *t != "sliding_attention" && *t != "full_attention")
            {
                return Err(format!("layer type `{bad}` is not supported"));
            }
        }
        self.linear_scaling().map(|_| ())
    }

    fn linear_scaling(&self) -> std::result::Result<f64, String> {
        let Some(value) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) else {
            return Ok(1.0);
        };
        let kind = value
            .get("rope_type")
            .or_else(|| value.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        match (kind, value.get("factor").and_then(|f| f.as_f64())) {
            ("default", _) => Ok(1.0),
            ("linear", Some(f)) if f > 0.0 && f.is_finite() => Ok(f),
            _ => Err(format!(
                "rope_scaling {value} is not supported (supported: linear with a positive factor)"
            )),
        }
    }

    /// Rotary inverse frequencies of the global layers (scaled) and of the sliding ones.
    fn inv_freqs(&self) -> (Vec<f64>, Vec<f64>) {
        let factor = self.linear_scaling().unwrap_or(1.0);
        let global = inv_freq(self.head_dim, self.rope_theta, None)
            .into_iter()
            .map(|f| f / factor)
            .collect();
        let local = inv_freq(self.head_dim, self.rope_local_base_freq, None);
        (global, local)
    }
}

impl DecoderConfig for Gemma3Config {
    fn param_count(&self) -> u128 {
        let n = |x: usize| x as u128;
        let (h, hd) = (n(self.hidden_size), n(self.head_dim));
        let (heads, kv) = (n(self.num_attention_heads), n(self.num_key_value_heads));
        let attention = h * heads * hd * 2 + h * kv * hd * 2 + 2 * hd;
        let layer = attention + 3 * h * n(self.intermediate_size) + 4 * h;
        n(self.num_hidden_layers) * layer + 2 * n(self.vocab_size) * h + h
    }

    fn context_elements(&self, positions: usize) -> u128 {
        let (layers, kv, hd) = (
            self.num_hidden_layers as u128,
            self.num_key_value_heads as u128,
            self.head_dim as u128,
        );
        let p = positions as u128;
        // Keys and values of every layer, and two RoPE tables (cos, sin) per base.
        2 * layers * kv * hd * p + 4 * p * hd
    }

    fn max_position_embeddings(&self) -> usize {
        self.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

#[derive(Debug)]
struct SelfAttention<B: Backend> {
    /// q, k and v projections side by side: `[hidden, (heads + 2 kv_heads) * head_dim]`.
    qkv_proj: Weight<B>,
    o_proj: Weight<B>,
    /// `1 + w` of the per-head RMSNorms of queries and keys, `[head_dim]`.
    q_norm: Tensor<B, 1>,
    k_norm: Tensor<B, 1>,
}

#[derive(Debug)]
struct Mlp<B: Backend> {
    /// Gate and up projections side by side: `[hidden, 2 * intermediate]`.
    gate_up_proj: Weight<B>,
    down_proj: Weight<B>,
}

/// One decoder layer; every norm weight is held as `1 + w`, the scale Gemma's RMSNorm applies.
#[derive(Debug)]
struct DecoderLayer<B: Backend> {
    input_layernorm: Tensor<B, 1>,
    self_attn: SelfAttention<B>,
    post_attention_layernorm: Tensor<B, 1>,
    pre_feedforward_layernorm: Tensor<B, 1>,
    mlp: Mlp<B>,
    post_feedforward_layernorm: Tensor<B, 1>,
    sliding: bool,
}

/// A loaded Gemma 3 model; immutable, its state lives in the [`KvCache`] passed to `forward`.
#[derive(Debug)]
pub struct Gemma3<B: Backend> {
    config: Gemma3Config,
    /// `[vocab, hidden]`
    embed_tokens: Embedding<B>,
    layers: Vec<DecoderLayer<B>>,
    /// `1 + w`, `[hidden]`
    norm: Tensor<B, 1>,
    /// `[hidden, vocab]`
    lm_head: Weight<B>,
    rope_global: Rope<B>,
    rope_local: Rope<B>,
    fused: Option<Fused<B>>,
}

/// What one step's layers share: RoPE tables and attention biases per layer type.
struct Shared<B: Backend> {
    global: (RopeTables<B>, Tensor<B, 4>),
    local: (RopeTables<B>, Tensor<B, 4>),
}

impl<B: Backend> Gemma3<B> {
    /// Every weight as (count, bytes on the device); a tied output projection counted as
    /// weights once per use, its memory once when shared.
    fn tally(&self) -> Vec<(usize, usize)> {
        let t1 = |t: &Tensor<B, 1>| (t.dims()[0], t.dims()[0] * t.dtype().size());
        let tw = |w: &Weight<B>| (w.num_params(), w.bytes());
        let shared = self.lm_head.is_quantized() && self.config.tie_word_embeddings;
        let lm_head = tw(&self.lm_head);
        let mut out = vec![
            (self.embed_tokens.num_params(), self.embed_tokens.bytes()),
            t1(&self.norm),
            (lm_head.0, if shared { 0 } else { lm_head.1 }),
        ];
        for l in &self.layers {
            let (a, m) = (&l.self_attn, &l.mlp);
            out.extend(
                [
                    &l.input_layernorm,
                    &l.post_attention_layernorm,
                    &l.pre_feedforward_layernorm,
                    &l.post_feedforward_layernorm,
                    &a.q_norm,
                    &a.k_norm,
                ]
                .map(t1),
            );
            out.extend([&a.qkv_proj, &a.o_proj, &m.gate_up_proj, &m.down_proj].map(tw));
        }
        out
    }

    fn fused(&self) -> Option<&dyn FusedOps<B>> {
        self.fused.as_ref().map(Fused::ops)
    }

    /// Gemma's RMSNorm over the last dim of `x: [batch, seq, width]` (`scale` is `1 + w`).
    fn norm(&self, x: Tensor<B, 3>, scale: &Tensor<B, 1>) -> Tensor<B, 3> {
        rms_norm_with(x, scale, self.config.rms_norm_eps, self.fused())
    }

    /// `x + y`, `y` widened to the residual stream's f32.
    fn residual_add(x: Tensor<B, 3>, y: Tensor<B, 3>) -> Tensor<B, 3> {
        x.add(y.cast(FloatDType::F32))
    }

    /// The per-head norm of `x: [batch, heads, seq, head_dim]`.
    fn head_norm(&self, x: Tensor<B, 4>, scale: &Tensor<B, 1>) -> Tensor<B, 4> {
        let [batch, heads, seq, hd] = x.dims();
        self.norm(x.reshape([batch, heads * seq, hd]), scale)
            .reshape([batch, heads, seq, hd])
    }

    /// One decoder layer on `x: [batch, seq, hidden]`; its rotated keys and values go to the
    /// cache at the step's positions.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        layer: &DecoderLayer<B>,
        index: usize,
        x: Tensor<B, 3>,
        cache: &mut KvCache<B>,
        step: &Step<B>,
        shared: &Shared<B>,
        attention: AttentionImpl,
    ) -> Result<Tensor<B, 3>> {
        let c = &self.config;
        let [batch, seq, _] = x.dims();
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let groups = heads / kv_heads;
        let (rope, bias) = if layer.sliding {
            &shared.local
        } else {
            &shared.global
        };
        let a = &layer.self_attn;
        let h = self.norm(x.clone(), &layer.input_layernorm);
        // [batch, seq, (heads + 2 kv) * hd] -> [batch, heads + 2 kv, seq, hd]
        let qkv = a
            .qkv_proj
            .forward_with(h, self.fused())
            .reshape([batch, seq, heads + 2 * kv_heads, hd])
            .swap_dims(1, 2);
        let q = self.head_norm(qkv.clone().narrow(1, 0, heads), &a.q_norm);
        let k = self.head_norm(qkv.clone().narrow(1, heads, kv_heads), &a.k_norm);
        let v = qkv.narrow(1, heads + kv_heads, kv_heads);
        // Attention scales by 1/sqrt(head_dim); Gemma by query_pre_attn_scalar^-0.5.
        let scale = (hd as f64 / c.query_pre_attn_scalar).sqrt();
        // RoPE and the cache write as one op where the backend has it.
        let (q, k, v) = match cache.rope_write(step, index, &q, &k, &v, rope) {
            Some(qkv) => qkv,
            None => {
                let q = rotate_with(q, rope, self.fused());
                let k = rotate_with(k, rope, self.fused());
                let (k, v) = cache.update_and_fetch(step, index, k, v)?;
                (q, k, v)
            }
        };
        let q = if scale == 1.0 { q } else { q.mul_scalar(scale) };
        let fused = self.fused();
        // One token at a host position: the backend's kernel over the real length (and the
        // sliding window's start), with no bias.
        let direct = if seq == 1 && attention == AttentionImpl::Fused {
            let keys = step.decode_keys(layer.sliding.then_some(c.sliding_window));
            fused
                .zip(keys)
                .and_then(|(f, keys)| f.decode_attention(&q, &k, &v, keys))
        } else {
            None
        };
        let out = match direct {
            Some(out) => out,
            None => {
                let out = if seq == 1 {
                    // One token: its query heads laid onto their KV head, K and V not repeated.
                    let q = q.reshape([batch, kv_heads, groups, hd]);
                    let bias = bias.clone().expand([batch, kv_heads, groups, k.dims()[2]]);
                    attend_all_with(q, k, v, Some(&bias), attention, fused)
                        .reshape([batch, heads, 1, hd])
                } else {
                    let bias = bias.clone().expand([batch, heads, seq, k.dims()[2]]);
                    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
                    attend_all_with(q, k, v, Some(&bias), attention, fused)
                };
                // [batch, heads, seq, hd] -> [batch, seq, heads * hd]
                out.swap_dims(1, 2).reshape([batch, seq, heads * hd])
            }
        };
        let out = self.norm(
            a.o_proj.forward_with(out, self.fused()),
            &layer.post_attention_layernorm,
        );
        let x = Self::residual_add(x, out);

        let h = self.norm(x.clone(), &layer.pre_feedforward_layernorm);
        let gate_up = layer.mlp.gate_up_proj.forward_with(h, self.fused());
        let down = gated_linear(gate_up, Gate::GeluTanh, &layer.mlp.down_proj, self.fused());
        Ok(Self::residual_add(
            x,
            self.norm(down, &layer.post_feedforward_layernorm),
        ))
    }
}

impl<B: Backend> DecoderModel<B> for Gemma3<B> {
    fn family(&self) -> &'static str {
        "gemma3"
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn num_params(&self) -> usize {
        self.tally().iter().map(|t| t.0).sum()
    }

    fn declared_params(&self) -> u128 {
        self.config.param_count()
    }

    fn weights_bytes(&self) -> usize {
        self.tally().iter().map(|t| t.1).sum()
    }

    fn new_cache(&self, batch: usize, capacity: usize, device: &B::Device) -> KvCache<B> {
        let c = &self.config;
        KvCache::new(
            c.num_hidden_layers,
            batch,
            c.num_key_value_heads,
            capacity.min(self.rope_global.context()),
            c.head_dim,
            device,
            self.embed_tokens.dtype(),
        )
        .with_fused(self.fused.clone())
    }

    fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        attention: AttentionImpl,
        logits: Logits,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq] = tokens.dims();
        let step = cache.begin(seq)?;
        let c = &self.config;
        let dtype = self.embed_tokens.dtype();
        let device = tokens.device();
        let mut x = self
            .embed_tokens
            .lookup(tokens.reshape([batch * seq]))
            .reshape([batch, seq, c.hidden_size])
            .mul_scalar((c.hidden_size as f64).sqrt())
            .cast(FloatDType::F32);
        // The global layers see every earlier position, the sliding ones the last
        // `sliding_window`; both biases also hide the decode window's padding.
        let shared = Shared {
            global: (
                step.rope(&self.rope_global),
                step.bias(None, dtype, &device),
            ),
            local: (
                step.rope(&self.rope_local),
                step.bias(Some(c.sliding_window), dtype, &device),
            ),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer(layer, i, x, cache, &step, &shared, attention)?;
        }
        cache.finish(&step);
        let x = match logits {
            Logits::All => x,
            Logits::Last => x.narrow(1, seq - 1, 1),
        };
        let x = self.norm(x, &self.norm);
        let logits = self.lm_head.forward_with(x, self.fused());
        Ok(match c.final_logit_softcapping {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        })
    }
}

impl<B: Backend> LoadDecoder<B> for Gemma3<B> {
    type Config = Gemma3Config;

    fn config_from_gguf(file: &GgufFile) -> Result<Gemma3Config> {
        Gemma3Config::from_gguf(file)
    }

    fn config_from_json(text: &str, path: &Path) -> Result<Gemma3Config> {
        Gemma3Config::from_json(text, path)
    }

    fn default_chat_template() -> Option<&'static str> {
        Some(CHAT_TEMPLATE)
    }

    fn gguf_store<'a>(file: &'a GgufFile, _config: &Gemma3Config) -> Box<dyn TensorStore + 'a> {
        // llama.cpp's converter stores Gemma's norm weights as `1 + w`; the store hands out
        // `w`, as the Hugging Face checkpoint has it.
        let offset = |name: &str| {
            if name.ends_with("norm.weight") {
                1.0
            } else {
                0.0
            }
        };
        let fixes = Fixes {
            offset: Box::new(offset),
            ..Fixes::none()
        };
        Box::new(GgufStore::new(file, GGUF_NAMES, GGUF_LAYER_NAMES, fixes))
    }

    fn load(
        config: Gemma3Config,
        loader: &Loader<'_, B>,
        context: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let h = config.hidden_size;
        let (heads, kv_heads, hd) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let inter = config.intermediate_size;
        // Norm weights as the scale they apply: `1 + w`.
        let scale = |name: &str, width: usize| -> Result<Tensor<B, 1>> {
            Ok(loader.tensor(name, [width])?.add_scalar(1.0))
        };
        let embed_tokens = loader.embedding("model.embed_tokens.weight", config.vocab_size, h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = |name: &str| format!("model.layers.{i}.{name}");
            layers.push(DecoderLayer {
                input_layernorm: scale(&p("input_layernorm.weight"), h)?,
                self_attn: SelfAttention {
                    qkv_proj: Weight::concat(vec![
                        loader.weight(&p("self_attn.q_proj.weight"), heads * hd, h)?,
                        loader.weight(&p("self_attn.k_proj.weight"), kv_heads * hd, h)?,
                        loader.weight(&p("self_attn.v_proj.weight"), kv_heads * hd, h)?,
                    ]),
                    o_proj: loader.weight(&p("self_attn.o_proj.weight"), h, heads * hd)?,
                    q_norm: scale(&p("self_attn.q_norm.weight"), hd)?,
                    k_norm: scale(&p("self_attn.k_norm.weight"), hd)?,
                },
                post_attention_layernorm: scale(&p("post_attention_layernorm.weight"), h)?,
                pre_feedforward_layernorm: scale(&p("pre_feedforward_layernorm.weight"), h)?,
                mlp: Mlp {
                    gate_up_proj: Weight::concat(vec![
                        loader.weight(&p("mlp.gate_proj.weight"), inter, h)?,
                        loader.weight(&p("mlp.up_proj.weight"), inter, h)?,
                    ]),
                    down_proj: loader.weight(&p("mlp.down_proj.weight"), h, inter)?,
                },
                post_feedforward_layernorm: scale(&p("post_feedforward_layernorm.weight"), h)?,
                sliding: config.is_sliding(i),
            });
        }
        let norm = scale("model.norm.weight", h)?;
        let lm_head = match (config.tie_word_embeddings, embed_tokens.tied()) {
            (true, Some(shared)) => shared,
            (true, None) => loader.weight("model.embed_tokens.weight", config.vocab_size, h)?,
            (false, _) => loader.weight("lm_head.weight", config.vocab_size, h)?,
        };
        let dtype = embed_tokens.dtype();
        let (global, local) = config.inv_freqs();
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope_global: Rope::new(&global, context, device, dtype),
            rope_local: Rope::new(&local, context, device, dtype),
            fused: loader.fused(),
        })
    }
}

/// Gemma's turn format, for checkpoints without a template (the Gemma 3 270M GGUF has
/// none): `<start_of_turn>user` / `<start_of_turn>model` turns, each closed by
/// `<end_of_turn>` and a newline; a system message opens the first user turn, separated by
/// a blank line. Written here; checked against the official template's rendering by
/// `transformers` (crates/ember-tests, fixtures/gemma3/reference.json).
const CHAT_TEMPLATE: &str = r#"{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
    {%- set prefix = (messages[0].content | trim) ~ '\n\n' -%}
    {%- set turns = messages[1:] -%}
{%- else -%}
    {%- set prefix = '' -%}
    {%- set turns = messages -%}
{%- endif -%}
{%- for m in turns -%}
    {{- '<start_of_turn>' ~ ('model' if m.role == 'assistant' else m.role) ~ '\n' -}}
    {{- (prefix if loop.first else '') ~ (m.content | trim) ~ '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"#;

/// Hugging Face name -> llama.cpp name, for tensors outside the layers.
const GGUF_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Hugging Face name -> llama.cpp name, inside `model.layers.N.` / `blk.N.`.
const GGUF_LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    (
        "post_attention_layernorm.weight",
        "post_attention_norm.weight",
    ),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
];
