//! BERT encoders (all-MiniLM-L6-v2 and kin): absolute position and token-type embeddings,
//! post-norm layers, GELU; loaded from a Hugging Face directory by the same loader as the
//! decoders, and pooled the way the directory's sentence-transformers files say.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::module::attention as fused_attention;
use burn::tensor::ops::AttentionModuleOptions;
use serde::{Deserialize, Serialize};

use crate::config::AttentionImpl;
use crate::error::{Error, Result};
use crate::format::Loader;
use crate::nn::{layer_norm, linear, scaled_softmax};

/// A BERT `config.json`, in Hugging Face's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Activation: `gelu` and `gelu_python` (exact erf), `gelu_new` (tanh approximation).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Positions the model has embeddings for.
    pub max_position_embeddings: usize,
    /// Token types (segments).
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// `absolute` is supported.
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Weights the encoder loads: word, position and token-type embeddings with their
    /// LayerNorm, and per layer the attention and feed-forward matrices, biases and norms.
    /// Counted from the config alone, before any file is read.
    pub fn param_count(&self) -> u128 {
        let n = |x: usize| x as u128;
        let (h, i) = (n(self.hidden_size), n(self.intermediate_size));
        let embeddings =
            (n(self.vocab_size) + n(self.max_position_embeddings) + n(self.type_vocab_size)) * h
                + 2 * h;
        let layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h;
        embeddings + n(self.num_hidden_layers) * layer
    }

    /// Parses and checks `config.json`.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::model(path, format!("invalid BERT config.json: {e}")))?;
        let bad = |m: String| Err(Error::model(path, m));
        if config.hidden_size == 0
            || config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not a positive multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            ));
        }
        if config.vocab_size == 0 || config.max_position_embeddings == 0 {
            return bad("vocab_size and max_position_embeddings must be positive".into());
        }
        if !matches!(
            config.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_python"
        ) {
            return bad(format!(
                "hidden_act `{}` is not supported (gelu)",
                config.hidden_act
            ));
        }
        if config.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type `{}` is not supported (absolute)",
                config.position_embedding_type
            ));
        }
        Ok(config)
    }
}

#[derive(Debug)]
struct Dense<B: Backend> {
    /// `[in, out]`
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
}

impl<B: Backend> Dense<B> {
    fn load(loader: &Loader<'_, B>, name: &str, out: usize, inp: usize) -> Result<Self> {
        Ok(Self {
            weight: loader.linear(&format!("{name}.weight"), out, inp)?,
            bias: loader.tensor(&format!("{name}.bias"), [out])?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(x, &self.weight).add(self.bias.clone().unsqueeze::<3>())
    }
}

#[derive(Debug)]
struct Norm<B: Backend> {
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
}

impl<B: Backend> Norm<B> {
    fn load(loader: &Loader<'_, B>, name: &str, h: usize) -> Result<Self> {
        Ok(Self {
            weight: loader.tensor(&format!("{name}.weight"), [h])?,
            bias: loader.tensor(&format!("{name}.bias"), [h])?,
        })
    }
}

#[derive(Debug)]
struct Layer<B: Backend> {
    query: Dense<B>,
    key: Dense<B>,
    value: Dense<B>,
    attn_out: Dense<B>,
    attn_norm: Norm<B>,
    intermediate: Dense<B>,
    output: Dense<B>,
    out_norm: Norm<B>,
}

/// A loaded BERT encoder.
#[derive(Debug)]
pub struct Bert<B: Backend> {
    config: BertConfig,
    word: Tensor<B, 2>,
    position: Tensor<B, 2>,
    token_type: Tensor<B, 2>,
    emb_norm: Norm<B>,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> Bert<B> {
    /// Loads weights by their Hugging Face names, with or without the `bert.` prefix;
    /// the pooler (unused by sentence embeddings) and `position_ids` are skipped.
    pub fn load(config: BertConfig, loader: &Loader<'_, B>) -> Result<Self> {
        let prefix = if loader.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let n = |name: &str| format!("{prefix}{name}");
        let (h, inter) = (config.hidden_size, config.intermediate_size);
        let word = loader.tensor(
            &n("embeddings.word_embeddings.weight"),
            [config.vocab_size, h],
        )?;
        let position = loader.tensor(
            &n("embeddings.position_embeddings.weight"),
            [config.max_position_embeddings, h],
        )?;
        let token_type = loader.tensor(
            &n("embeddings.token_type_embeddings.weight"),
            [config.type_vocab_size, h],
        )?;
        let emb_norm = Norm::load(loader, &n("embeddings.LayerNorm"), h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = |s: &str| n(&format!("encoder.layer.{i}.{s}"));
            layers.push(Layer {
                query: Dense::load(loader, &p("attention.self.query"), h, h)?,
                key: Dense::load(loader, &p("attention.self.key"), h, h)?,
                value: Dense::load(loader, &p("attention.self.value"), h, h)?,
                attn_out: Dense::load(loader, &p("attention.output.dense"), h, h)?,
                attn_norm: Norm::load(loader, &p("attention.output.LayerNorm"), h)?,
                intermediate: Dense::load(loader, &p("intermediate.dense"), inter, h)?,
                output: Dense::load(loader, &p("output.dense"), h, inter)?,
                out_norm: Norm::load(loader, &p("output.LayerNorm"), h)?,
            });
        }
        for extra in [
            "embeddings.position_ids",
            "pooler.dense.weight",
            "pooler.dense.bias",
        ] {
            if loader.contains(&n(extra)) {
                loader.skip(&n(extra));
            }
        }
        Ok(Self {
            config,
            word,
            position,
            token_type,
            emb_norm,
            layers,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Bytes of weights on the device.
    pub fn weights_bytes(&self) -> usize {
        let mut n = self.word.shape().num_elements()
            + self.position.shape().num_elements()
            + self.token_type.shape().num_elements();
        let h = self.config.hidden_size;
        let i = self.config.intermediate_size;
        n += 2 * h + self.layers.len() * (4 * (h * h + h) + 2 * (h * i) + i + h + 4 * h);
        n * self.word.dtype().size()
    }

    /// Hidden states `[batch, seq, hidden]` of `ids` (`[batch, seq]`, padded), where `lengths`
    /// gives each row's real length; padded keys are hidden from every query.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        lengths: &[usize],
        attention: AttentionImpl,
    ) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let hd = h / heads;
        let dtype = self.word.dtype();
        let words = self
            .word
            .clone()
            .select(0, ids.reshape([batch * seq]))
            .reshape([batch, seq, h]);
        let positions = self.position.clone().slice([0..seq, 0..h]).unsqueeze::<3>();
        let types = self.token_type.clone().slice([0..1, 0..h]).unsqueeze::<3>();
        let x = words.add(positions).add(types);
        let mut x = layer_norm(
            x,
            &self.emb_norm.weight,
            &self.emb_norm.bias,
            self.config.layer_norm_eps,
        );
        // Additive bias hiding padded keys: 0 where visible, -inf where padded. (An additive
        // bias, not burn's boolean mask: burn-tch 0.21 hands the mask to PyTorch inverted.)
        let padded = lengths.iter().any(|&l| l < seq);
        let bias = padded.then(|| {
            let cols = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
                .reshape([1, seq])
                .expand([batch, seq]);
            let lens: Vec<i64> = lengths.iter().map(|&l| l as i64).collect();
            let lens = Tensor::<B, 1, Int>::from_data(TensorData::new(lens, [batch]), &device)
                .reshape([batch, 1])
                .expand([batch, seq]);
            let hidden = cols.greater_equal(lens).reshape([batch, 1, 1, seq]);
            Tensor::<B, 4>::zeros([batch, 1, 1, seq], (&device, dtype))
                .mask_fill(hidden, f32::NEG_INFINITY)
                .expand([batch, heads, seq, seq])
        });
        let eps = self.config.layer_norm_eps;
        for layer in &self.layers {
            let split = |t: Tensor<B, 3>| t.reshape([batch, seq, heads, hd]).swap_dims(1, 2);
            let q = split(layer.query.forward(x.clone()));
            let k = split(layer.key.forward(x.clone()));
            let v = split(layer.value.forward(x.clone()));
            let ctx = match attention {
                AttentionImpl::Fused => fused_attention(
                    q,
                    k,
                    v,
                    None,
                    bias.clone(),
                    AttentionModuleOptions {
                        scale: None,
                        softcap: None,
                        is_causal: false,
                    },
                ),
                AttentionImpl::Plain => {
                    let scores = q.matmul(k.swap_dims(2, 3));
                    scaled_softmax(scores, (hd as f64).powf(-0.5), bias.as_ref()).matmul(v)
                }
            };
            let ctx = ctx.swap_dims(1, 2).reshape([batch, seq, h]);
            let attn = layer.attn_out.forward(ctx).add(x);
            let attn = layer_norm(attn, &layer.attn_norm.weight, &layer.attn_norm.bias, eps);
            let ff = layer.intermediate.forward(attn.clone());
            // `gelu` is the exact erf form (burn's `gelu` is tanh's on candle).
            let ff = if self.config.hidden_act == "gelu_new" {
                crate::nn::gelu_tanh(ff)
            } else {
                crate::nn::gelu_erf(ff)
            };
            let out = layer.output.forward(ff).add(attn);
            x = layer_norm(out, &layer.out_norm.weight, &layer.out_norm.bias, eps);
        }
        x
    }
}
