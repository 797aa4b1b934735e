//! Llama-family decoders (Llama 2/3.x, SmolLM2, TinyLlama, ...) and the two close relatives
//! that differ only in their attention's projections: Qwen2 (biases on q, k and v) and Qwen3
//! (a per-head RMSNorm of q and k before RoPE). One implementation whose sizes all come from
//! the checkpoint's config.
//!
//! Follows huggingface/transformers `src/transformers/models/llama/modeling_llama.py`,
//! `qwen2/modeling_qwen2.py` and `qwen3/modeling_qwen3.py`.

use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::AttentionImpl;
use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use crate::format::gguf_store::{Fixes, GgufStore};
use crate::format::{Loader, TensorStore};
use crate::nn::attention::{attend_all_with, causal_attention_with, repeat_kv};
use crate::nn::kv_cache::{KvCache, Step};
use crate::nn::linear::{Embedding, Weight};
use crate::nn::rope::{inv_freq, rotate_with, Llama3Scaling, Rope, RopeTables};
use crate::nn::{add_rms_norm_linear_with, gated, gated_linear, rms_norm_with, Fused, Gate};

pub use super::Logits;
use super::{DecoderConfig, DecoderModel, GgufKeys, LoadDecoder};

/// A Llama checkpoint's `config.json`, in Hugging Face's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RoPE scaling as written in `config.json` (`rope_type = "llama3"` is supported).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Context the model was trained for.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether the output projection reuses the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `llama`, `qwen2` or `qwen3` (`config.json`'s `model_type`, GGUF's architecture).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Whether q, k and v projections have biases (default: true for Qwen2 only).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Per-frequency divisors of the rotary frequencies (GGUF `rope_freqs.weight`).
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f32>>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_model_type() -> String {
    "llama".into()
}

impl LlamaConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Whether q, k and v projections carry biases (Qwen2).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.model_type == "qwen2")
    }

    /// Whether q and k are RMS-normalized per head before RoPE (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.model_type == "qwen3"
    }

    /// Parses `config.json` text.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::model(path, format!("invalid Llama config.json: {e}")))?;
        config.validate().map_err(|m| Error::model(path, m))?;
        Ok(config)
    }

    /// Reads the `llama.*` metadata of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let keys = GgufKeys::new(file)?;
        let heads = keys.usize("attention.head_count")?;
        let kv_heads = match file.get_u64(&keys.key("attention.head_count_kv")) {
            Ok(v) => Some(v as usize),
            Err(_) => None,
        };
        let hidden_size = keys.usize("embedding_length")?;
        let head_dim = file
            .get_u64(&keys.key("attention.key_length"))
            .or_else(|_| file.get_u64(&keys.key("rope.dimension_count")))
            .ok()
            .map(|v| v as usize);
        let vocab_size = keys.vocab_size()?;
        let rope_freq_factors = match file.tensor("rope_freqs.weight") {
            Some(info) => Some(file.dequantize(info).map_err(|e| keys.error(e))?),
            None => None,
        };
        let config = Self {
            hidden_size,
            intermediate_size: keys.usize("feed_forward_length")?,
            num_hidden_layers: keys.usize("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: keys.f64("attention.layer_norm_rms_epsilon")?,
            rope_theta: keys.f64("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: keys.usize("context_length")?,
            vocab_size,
            tie_word_embeddings: file.tensor("output.weight").is_none(),
            model_type: keys.arch().to_string(),
            attention_bias: None,
            rope_freq_factors,
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
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !["llama", "qwen2", "qwen3"].contains(&self.model_type.as_str()) {
            return Err(format!(
                "model_type `{}` is not a Llama-family variant (llama, qwen2, qwen3)",
                self.model_type
            ));
        }
        // Generous caps keep a hostile config from asking for absurd allocations.
        if self.hidden_size > 1 << 16
            || self.intermediate_size > 1 << 18
            || self.num_hidden_layers > 1024
        {
            return Err(format!(
                "implausible sizes (hidden_size {}, intermediate_size {}, layers {})",
                self.hidden_size, self.intermediate_size, self.num_hidden_layers
            ));
        }
        if self.vocab_size > 1 << 22 {
            return Err(format!(
                "vocab_size {} is implausibly large",
                self.vocab_size
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size ({}) is not a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(format!(
                "rms_norm_eps must be positive, got {}",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(format!(
                "rope_theta must be positive, got {}",
                self.rope_theta
            ));
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim() / 2 || f.iter().any(|x| !(*x > 0.0 && x.is_finite())) {
                return Err(format!(
                    "rope_freqs has {} factors, expected {} positive ones",
                    f.len(),
                    self.head_dim() / 2
                ));
            }
        }
        self.llama3_scaling().map(|_| ())
    }

    fn llama3_scaling(&self) -> std::result::Result<Option<Llama3Scaling>, String> {
        let Some(value) = &self.rope_scaling else {
            return Ok(None);
        };
        if value.is_null() {
            return Ok(None);
        }
        let kind = value
            .get("rope_type")
            .or_else(|| value.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        match kind {
            "default" => Ok(None),
            "llama3" => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| format!("rope_scaling: {e}")),
            other => Err(format!(
                "rope_scaling type `{other}` is not supported (supported: llama3)"
            )),
        }
    }

    /// The rotary inverse frequencies, with scaling applied.
    pub fn inv_freq(&self) -> Vec<f64> {
        let scaling = self.llama3_scaling().ok().flatten();
        let mut freqs = inv_freq(self.head_dim(), self.rope_theta, scaling.as_ref());
        if let Some(factors) = &self.rope_freq_factors {
            for (f, &d) in freqs.iter_mut().zip(factors) {
                *f /= f64::from(d);
            }
        }
        freqs
    }
}

#[derive(Debug)]
struct SelfAttention<B: Backend> {
    /// q, k and v projections side by side: `[hidden, (heads + 2 kv_heads) * head_dim]`,
    /// one matmul instead of three.
    qkv_proj: Weight<B>,
    /// Their biases side by side (Qwen2), `[(heads + 2 kv_heads) * head_dim]`.
    qkv_bias: Option<Tensor<B, 1>>,
    /// Per-head RMSNorm weights of q and k, `[head_dim]` (Qwen3).
    qk_norm: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    o_proj: Weight<B>,
}

#[derive(Debug)]
struct Mlp<B: Backend> {
    /// Gate and up projections side by side: `[hidden, 2 * intermediate]`.
    gate_up_proj: Weight<B>,
    down_proj: Weight<B>,
}

#[derive(Debug)]
struct DecoderLayer<B: Backend> {
    input_layernorm: Tensor<B, 1>,
    self_attn: SelfAttention<B>,
    post_attention_layernorm: Tensor<B, 1>,
    mlp: Mlp<B>,
}

/// A loaded Llama model; immutable, its state lives in the [`KvCache`] passed to `forward`.
#[derive(Debug)]
pub struct Llama<B: Backend> {
    config: LlamaConfig,
    /// `[vocab, hidden]`
    embed_tokens: Embedding<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: Tensor<B, 1>,
    /// `[hidden, vocab]`
    lm_head: Weight<B>,
    rope: Rope<B>,
    /// The backend's fused ops, when it has some ([`crate::nn::FusedOps`]).
    fused: Option<Fused<B>>,
}

/// The residual stream between two sublayers: `x`, and a sublayer's output not added yet
/// (on a backend whose next norm adds it: [`crate::nn::FusedOps::add_rms_norm`]).
struct Residual<B: Backend> {
    x: Tensor<B, 3>,
    pending: Option<Tensor<B, 3>>,
}

impl<B: Backend> Residual<B> {
    /// The positions `start..start + len` of the sequence.
    fn narrow(self, start: usize, len: usize) -> Self {
        Self {
            x: self.x.narrow(1, start, len),
            pending: self.pending.map(|y| y.narrow(1, start, len)),
        }
    }
}

impl<B: Backend> Llama<B> {
    /// `residual + x.matmul(w)`: one op where the backend can, or the projection left for
    /// the next norm to add where that is the backend's fused op.
    fn residual_add(&self, residual: Tensor<B, 3>, x: Tensor<B, 3>, w: &Weight<B>) -> Residual<B> {
        let fused = self.fused.as_ref().map(Fused::ops);
        if fused.is_some_and(|f| f.fuses_add_rms_norm()) {
            return Residual {
                x: residual,
                pending: Some(w.forward_with(x, fused)),
            };
        }
        Residual {
            x: w.forward_add(residual, x, fused),
            pending: None,
        }
    }

    /// The residual stream with its pending output added, and its RMSNorm by `weight`
    /// through the projection `w`: one op where the backend has it.
    fn add_norm_linear(
        &self,
        r: Residual<B>,
        weight: &Tensor<B, 1>,
        w: &Weight<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let fused = self.fused.as_ref().map(Fused::ops);
        match r.pending {
            Some(y) => add_rms_norm_linear_with(r.x, y, weight, self.config.rms_norm_eps, w, fused),
            None => {
                let h = self.norm(r.x.clone(), weight);
                (r.x, w.forward_with(h, fused))
            }
        }
    }

    /// RMSNorm with the model's epsilon, fused where the backend can.
    fn norm(&self, x: Tensor<B, 3>, weight: &Tensor<B, 1>) -> Tensor<B, 3> {
        let fused = self.fused.as_ref().map(Fused::ops);
        rms_norm_with(x, weight, self.config.rms_norm_eps, fused)
    }

    /// RMSNorm over the last dim of `x: [batch, heads, seq, head_dim]`.
    fn head_norm(&self, x: Tensor<B, 4>, weight: &Tensor<B, 1>) -> Tensor<B, 4> {
        let [batch, heads, seq, hd] = x.dims();
        self.norm(x.reshape([batch, heads * seq, hd]), weight)
            .reshape([batch, heads, seq, hd])
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The norms, biases and projections of every layer and outside them, as (weights,
    /// bytes) pairs; a tied output projection counted as a weight once per use.
    fn tally(&self) -> Vec<(usize, usize)> {
        let t1 = |t: &Tensor<B, 1>| (t.dims()[0], t.dims()[0] * t.dtype().size());
        let tw = |w: &Weight<B>| (w.num_params(), w.bytes());
        let mut out = vec![
            (self.embed_tokens.num_params(), self.embed_tokens.bytes()),
            t1(&self.norm),
            tw(&self.lm_head),
        ];
        if self.lm_head.is_quantized() && self.config.tie_word_embeddings {
            // Shared with the embedding: its memory once.
            out[2].1 = 0;
        }
        for l in &self.layers {
            let (a, m) = (&l.self_attn, &l.mlp);
            out.extend([t1(&l.input_layernorm), t1(&l.post_attention_layernorm)]);
            out.extend(a.qkv_bias.as_ref().map(t1));
            if let Some((q, k)) = &a.qk_norm {
                out.extend([t1(q), t1(k)]);
            }
            out.extend([&a.qkv_proj, &a.o_proj, &m.gate_up_proj, &m.down_proj].map(tw));
        }
        out
    }

    /// q, k and v side by side, `[batch, seq, (heads + 2 kv) * head_dim]`: the residual
    /// stream `x` normed through the layer's one projection for the three, and its bias.
    fn qkv(&self, layer: &DecoderLayer<B>, x: Residual<B>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let a = &layer.self_attn;
        let (x, qkv) = self.add_norm_linear(x, &layer.input_layernorm, &a.qkv_proj);
        let qkv = match &a.qkv_bias {
            Some(bias) => qkv.add(bias.clone().unsqueeze::<3>()),
            None => qkv,
        };
        (x, qkv)
    }

    /// One decoder layer on the residual stream `x: [batch, seq, hidden]`: its new keys and
    /// values go to the cache at the step's positions; `bias` (`[1, 1, seq, visible]`) hides
    /// what the step's queries must not see (`None`: a square causal prefill, which
    /// attention masks itself).
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        layer: &DecoderLayer<B>,
        index: usize,
        x: Residual<B>,
        cache: &mut KvCache<B>,
        step: &Step<B>,
        rope: &RopeTables<B>,
        bias: Option<&Tensor<B, 4>>,
        attention: AttentionImpl,
    ) -> Result<Residual<B>> {
        let (x, qkv) = self.qkv(layer, x);
        let out = self.attend(layer, index, qkv, cache, step, rope, bias, attention)?;
        Ok(self.after_attention(layer, x, out))
    }

    /// The attention of one layer for `qkv: [batch, seq, (heads + 2 kv) * head_dim]` at
    /// the step's positions of `cache`: `[batch, seq, heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        layer: &DecoderLayer<B>,
        index: usize,
        qkv: Tensor<B, 3>,
        cache: &mut KvCache<B>,
        step: &Step<B>,
        rope: &RopeTables<B>,
        bias: Option<&Tensor<B, 4>>,
        attention: AttentionImpl,
    ) -> Result<Tensor<B, 3>> {
        let c = &self.config;
        let [batch, seq, _] = qkv.dims();
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let groups = heads / kv_heads;
        let a = &layer.self_attn;
        // A decode step's RoPE, cache write and attention as one op where the backend has it.
        let one_op = attention == AttentionImpl::Fused && bias.is_some() && a.qk_norm.is_none();
        if one_op {
            if let Some(out) = cache.rope_write_attend(step, index, &qkv, heads, rope) {
                return Ok(out);
            }
        }
        // RoPE and the cache write of the projection as it is, where the backend has the op
        // (no split into heads: a backend may copy the views of a split).
        let packed = match &a.qk_norm {
            None => cache.rope_write_packed(step, index, &qkv, heads, rope),
            Some(_) => None,
        };
        let fused = self.fused.as_ref().map(Fused::ops);
        let (q, k, v) = match packed {
            Some(qkv) => qkv,
            None => self.split_rope_write(layer, index, qkv, cache, step, rope)?,
        };
        let visible = step.visible();
        if attention == AttentionImpl::Fused && bias.is_some() {
            // One token at a host position: the backend's kernel over the real length.
            let keys = step.decode_keys(None);
            if let Some(out) = fused
                .zip(keys)
                .and_then(|(f, keys)| f.decode_attention(&q, &k, &v, keys))
            {
                return Ok(out);
            }
        }
        let out = match bias {
            Some(bias) if seq == 1 => {
                // One new token sees every cached position. Its query heads are laid onto
                // their KV head ([b, heads, 1, d] -> [b, kv_heads, groups, d]; head h reads
                // KV head h / groups, as `repeat_kv` orders them), so K and V are not
                // repeated: two copies of the attended cache fewer per layer.
                let q = q.reshape([batch, kv_heads, groups, hd]);
                let bias = bias.clone().expand([batch, kv_heads, groups, visible]);
                attend_all_with(q, k, v, Some(&bias), attention, fused)
                    .reshape([batch, heads, 1, hd])
            }
            Some(bias) => {
                let bias = bias.clone().expand([batch, heads, seq, visible]);
                let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
                attend_all_with(q, k, v, Some(&bias), attention, fused)
            }
            // K and V not repeated: the hook reads KV head h / groups (change 30).
            None => causal_attention_with(q, k, v, attention, fused),
        };
        // [batch, heads, seq, hd] -> [batch, seq, heads * hd]
        Ok(out.swap_dims(1, 2).reshape([batch, seq, heads * hd]))
    }

    /// `qkv: [batch, seq, (heads + 2 kv) * head_dim]` split into q, k and v heads, q and k
    /// rotated and k and v written into layer `index`'s cache: `(q, k, v)` with `k` and `v`
    /// the cache's visible positions.
    fn split_rope_write(
        &self,
        layer: &DecoderLayer<B>,
        index: usize,
        qkv: Tensor<B, 3>,
        cache: &mut KvCache<B>,
        step: &Step<B>,
        rope: &RopeTables<B>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
        let c = &self.config;
        let [batch, seq, _] = qkv.dims();
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let a = &layer.self_attn;
        // Split into heads once: [batch, seq, (heads + 2 kv) * hd] -> [batch, heads + 2 kv,
        // seq, hd]; q's and k's heads are rotated together, then q, k and v are views of
        // their heads.
        let qkv = qkv
            .reshape([batch, seq, heads + 2 * kv_heads, hd])
            .swap_dims(1, 2);
        let v = qkv.clone().narrow(1, heads + kv_heads, kv_heads);
        let fused = self.fused.as_ref().map(Fused::ops);
        let rotate = |x, rope| rotate_with(x, rope, fused);
        let (q, k) = match &a.qk_norm {
            None => (
                qkv.clone().narrow(1, 0, heads),
                qkv.clone().narrow(1, heads, kv_heads),
            ),
            Some((q_norm, k_norm)) => (
                self.head_norm(qkv.clone().narrow(1, 0, heads), q_norm),
                self.head_norm(qkv.clone().narrow(1, heads, kv_heads), k_norm),
            ),
        };
        // RoPE and the cache write as one op where the backend has it; else q's and k's
        // heads rotated (together when they are adjacent views of the projection).
        Ok(match cache.rope_write(step, index, &q, &k, &v, rope) {
            Some(qkv) => qkv,
            None => {
                let (q, k) = match &a.qk_norm {
                    None => {
                        let qk = rotate(qkv.narrow(1, 0, heads + kv_heads), rope);
                        (
                            qk.clone().narrow(1, 0, heads),
                            qk.narrow(1, heads, kv_heads),
                        )
                    }
                    Some(_) => (rotate(q, rope), rotate(k, rope)),
                };
                let (k, v) = cache.update_and_fetch(step, index, k, v)?;
                (q, k, v)
            }
        })
    }

    /// The rest of a layer after its attention `out`: the output projection added to `x`,
    /// then the MLP's.
    fn after_attention(
        &self,
        layer: &DecoderLayer<B>,
        x: Tensor<B, 3>,
        out: Tensor<B, 3>,
    ) -> Residual<B> {
        let x = self.residual_add(x, out, &layer.self_attn.o_proj);
        let m = &layer.mlp;
        let (x, gate_up) =
            self.add_norm_linear(x, &layer.post_attention_layernorm, &m.gate_up_proj);
        let fused = self.fused.as_ref().map(Fused::ops);
        if fused.is_some_and(|f| f.fuses_add_rms_norm()) {
            // The down projection's output stays pending for the next norm (as
            // `residual_add` keeps it), the activation its matrix-vector kernel's prologue
            // where the backend has one.
            return Residual {
                x,
                pending: Some(gated_linear(gate_up, Gate::Silu, &m.down_proj, fused)),
            };
        }
        let gated = gated(gate_up, Gate::Silu, fused);
        self.residual_add(x, gated, &m.down_proj)
    }
}

impl DecoderConfig for LlamaConfig {
    /// Weights the loaded model holds: the output projection is its own (transposed) copy
    /// even when tied to the embedding. Wide arithmetic, so hostile sizes cannot overflow.
    fn param_count(&self) -> u128 {
        let n = |x: usize| x as u128;
        let (h, hd) = (n(self.hidden_size), n(self.head_dim()));
        let (heads, kv) = (n(self.num_attention_heads), n(self.kv_heads()));
        let attention = h * heads * hd * 2 + h * kv * hd * 2;
        let mlp = 3 * h * n(self.intermediate_size);
        let bias = if self.qkv_bias() {
            (heads + 2 * kv) * hd
        } else {
            0
        };
        let qk_norm = if self.qk_norm() { 2 * hd } else { 0 };
        let layer = attention + mlp + 2 * h + bias + qk_norm;
        n(self.num_hidden_layers) * layer + 2 * n(self.vocab_size) * h + h
    }

    /// Elements of a KV cache for `positions` positions of one sequence (keys and values,
    /// every layer) plus the RoPE tables for as many.
    fn context_elements(&self, positions: usize) -> u128 {
        let (layers, kv, hd) = (
            self.num_hidden_layers as u128,
            self.kv_heads() as u128,
            self.head_dim() as u128,
        );
        let p = positions as u128;
        2 * layers * kv * hd * p + 2 * p * hd
    }
    fn max_position_embeddings(&self) -> usize {
        self.max_position_embeddings
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

impl<B: Backend> DecoderModel<B> for Llama<B> {
    fn family(&self) -> &'static str {
        match self.config.model_type.as_str() {
            "qwen2" => "qwen2",
            "qwen3" => "qwen3",
            _ => "llama",
        }
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
            c.kv_heads(),
            capacity.min(self.rope.context()),
            c.head_dim(),
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
        let x = self
            .embed_tokens
            .lookup(tokens.reshape([batch * seq]))
            .reshape([batch, seq, c.hidden_size]);
        // Built for every single-token step, also when the window is exactly full (then all
        // zeros): the step runs the same attention kernel at every position, as a replayed
        // step does.
        let bias = (!step.is_square_causal(None)).then(|| step.bias(None, x.dtype(), &x.device()));
        let rope = step.rope(&self.rope);
        let mut x = Residual { x, pending: None };
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer(layer, i, x, cache, &step, &rope, bias.as_ref(), attention)?;
        }
        cache.finish(&step);
        let x = match logits {
            Logits::All => x,
            Logits::Last => x.narrow(seq - 1, 1),
        };
        Ok(self.add_norm_linear(x, &self.norm, &self.lm_head).1)
    }
}

impl<B: Backend> LoadDecoder<B> for Llama<B> {
    type Config = LlamaConfig;
    fn config_from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
        LlamaConfig::from_gguf(file)
    }
    fn config_from_json(text: &str, path: &Path) -> Result<LlamaConfig> {
        LlamaConfig::from_json(text, path)
    }
    fn gguf_store<'a>(file: &'a GgufFile, config: &LlamaConfig) -> Box<dyn TensorStore + 'a> {
        Box::new(gguf_store(file, config))
    }
    fn synthetic(name: &str) -> Result<(LlamaConfig, Box<dyn TensorStore>)> {
        let preset = super::presets::Preset::parse(name)?;
        let config = preset.config();
        let store = super::presets::SyntheticStore::new(name, &config, 0).quantized(preset.quant);
        Ok((config, Box::new(store)))
    }
    fn load(
        config: LlamaConfig,
        loader: &Loader<'_, B>,
        context: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let h = config.hidden_size;
        let (heads, kv_heads, hd) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.head_dim(),
        );
        let inter = config.intermediate_size;
        let embed_tokens = loader.embedding("model.embed_tokens.weight", config.vocab_size, h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = |name: &str| format!("model.layers.{i}.{name}");
            layers.push(DecoderLayer {
                input_layernorm: loader.tensor(&p("input_layernorm.weight"), [h])?,
                self_attn: SelfAttention {
                    qkv_proj: Weight::concat(vec![
                        loader.weight(&p("self_attn.q_proj.weight"), heads * hd, h)?,
                        loader.weight(&p("self_attn.k_proj.weight"), kv_heads * hd, h)?,
                        loader.weight(&p("self_attn.v_proj.weight"), kv_heads * hd, h)?,
                    ]),
                    qkv_bias: if config.qkv_bias() {
                        Some(Tensor::cat(
                            vec![
                                loader.tensor(&p("self_attn.q_proj.bias"), [heads * hd])?,
                                loader.tensor(&p("self_attn.k_proj.bias"), [kv_heads * hd])?,
                                loader.tensor(&p("self_attn.v_proj.bias"), [kv_heads * hd])?,
                            ],
                            0,
                        ))
                    } else {
                        None
                    },
                    qk_norm: if config.qk_norm() {
                        Some((
                            loader.tensor(&p("self_attn.q_norm.weight"), [hd])?,
                            loader.tensor(&p("self_attn.k_norm.weight"), [hd])?,
                        ))
                    } else {
                        None
                    },
                    o_proj: loader.weight(&p("self_attn.o_proj.weight"), h, heads * hd)?,
                },
                post_attention_layernorm: loader
                    .tensor(&p("post_attention_layernorm.weight"), [h])?,
                mlp: Mlp {
                    gate_up_proj: Weight::concat(vec![
                        loader.weight(&p("mlp.gate_proj.weight"), inter, h)?,
                        loader.weight(&p("mlp.up_proj.weight"), inter, h)?,
                    ]),
                    down_proj: loader.weight(&p("mlp.down_proj.weight"), h, inter)?,
                },
            });
        }
        let norm = loader.tensor("model.norm.weight", [h])?;
        let lm_head = match (config.tie_word_embeddings, embed_tokens.tied()) {
            (true, Some(shared)) => shared,
            (true, None) => loader.weight("model.embed_tokens.weight", config.vocab_size, h)?,
            (false, _) => loader.weight("lm_head.weight", config.vocab_size, h)?,
        };
        if config.rope_freq_factors.is_some() {
            loader.skip(GGUF_ROPE_FREQS);
        }
        let rope = Rope::new(&config.inv_freq(), context, device, embed_tokens.dtype());
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            fused: loader.fused(),
        })
    }
}

const GGUF_ROPE_FREQS: &str = "rope_freqs.weight";

/// Hugging Face name -> llama.cpp name, for tensors outside the layers.
const GGUF_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    (GGUF_ROPE_FREQS, GGUF_ROPE_FREQS),
];

/// Hugging Face name -> llama.cpp name, inside `model.layers.N.` / `blk.N.`.
const GGUF_LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// A llama.cpp GGUF file seen through Hugging Face names, with Llama's Q/K rows un-permuted
/// back from llama.cpp's interleaved-RoPE order (Qwen's are stored as they are).
pub fn gguf_store<'a>(file: &'a GgufFile, config: &LlamaConfig) -> GgufStore<'a> {
    let (heads, kv_heads) = (config.num_attention_heads, config.kv_heads());
    let permuted = config.model_type == "llama";
    let rows = move |name: &str, shape: &[usize]| {
        let heads = if !permuted {
            return None;
        } else if name.ends_with("self_attn.q_proj.weight") {
            heads
        } else if name.ends_with("self_attn.k_proj.weight") {
            kv_heads
        } else {
            return None;
        };
        Some(unpermuted_rope_rows(heads, shape[0]))
    };
    let fixes = Fixes {
        rows: Box::new(rows),
        ..Fixes::none()
    };
    GgufStore::new(file, GGUF_NAMES, GGUF_LAYER_NAMES, fixes)
}

/// The row order undoing llama.cpp's `permute` of Q/K rows: per head, rows `[hd/2, 2]` ->
/// `[2, hd/2]` (row `h * hd + a * hd/2 + b` of the result is stored row `h * hd + 2 b + a`).
fn unpermuted_rope_rows(heads: usize, rows: usize) -> Vec<usize> {
    let hd = rows / heads;
    let half = hd / 2;
    (0..rows)
        .map(|row| {
            let (h, a, b) = (row / hd, (row % hd) / half, row % half);
            h * hd + b * 2 + a
        })
        .collect()
}
