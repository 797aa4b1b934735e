//! Rotary position embeddings in Hugging Face's rotate-half convention.
//!
//! GGUF files converted by llama.cpp store Q/K permuted for interleaved rotation; the GGUF
//! loader undoes that permutation, so one convention serves both formats.
//! Follows `LlamaRotaryEmbedding` and `_compute_llama3_parameters` in huggingface/transformers
//! `src/transformers/modeling_rope_utils.py`.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};

/// Llama 3's frequency-dependent rope scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Llama3Scaling {
    /// Scale for low frequencies.
    pub factor: f64,
    /// Wavelength bound below which frequencies are scaled fully.
    pub low_freq_factor: f64,
    /// Wavelength bound above which frequencies are kept.
    pub high_freq_factor: f64,
    /// Context the model was first trained for.
    pub original_max_position_embeddings: f64,
}

/// Inverse frequencies `theta^(-2i/d)`, optionally scaled, for `i < head_dim / 2`.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&Llama3Scaling>) -> Vec<f64> {
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    let Some(s) = scaling else {
        return base;
    };
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / s.factor
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

/// cos and sin of some positions, `[1, 1, seq, head_dim]`, as [`rotate`] takes them.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    /// cos of the angles, `[1 or rows, 1, seq, head_dim]`.
    pub fn cos(&self) -> &Tensor<B, 4> {
        &self.cos
    }

    /// sin of the angles, `[1 or rows, 1, seq, head_dim]`, negated in the first half
    /// (rotate-half's sign; see [`rotate`]).
    pub fn sin(&self) -> &Tensor<B, 4> {
        &self.sin
    }
}

/// [`rotate`] through `fused` where it can.
pub fn rotate_with<B: Backend>(
    x: Tensor<B, 4>,
    tables: &RopeTables<B>,
    fused: Option<&dyn crate::nn::FusedOps<B>>,
) -> Tensor<B, 4> {
    match fused.and_then(|f| f.rotate(&x, &tables.cos, &tables.sin)) {
        Some(y) => y,
        None => rotate(x, tables),
    }
}

/// Rotates `x: [batch, heads, seq, head_dim]` by the angles of `tables`.
pub fn rotate<B: Backend>(x: Tensor<B, 4>, tables: &RopeTables<B>) -> Tensor<B, 4> {
    let [batch, heads, seq, head_dim] = x.dims();
    // rotate_half(x) * sin = [-x2, x1] * [sin, sin] = [x2, x1] * [-sin, sin]: the halves
    // swapped by one flip, the sign in the table. Fewer operations than narrowing,
    // negating and concatenating (which burn does with two slice-assigns): on CubeCL 8
    // kernel launches fewer per layer (docs/performance.md).
    let half = head_dim / 2;
    let swapped = x
        .clone()
        .reshape([batch * heads * seq, 2, half])
        .flip([1])
        .reshape([batch, heads, seq, head_dim]);
    x.mul(tables.cos.clone())
        .add(swapped.mul(tables.sin.clone()))
}

/// Precomputed cos/sin tables for every position of the context.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// `[context, head_dim]`
    cos: Tensor<B, 2>,
    /// `[context, head_dim]`, negated in the first half: rotate-half's sign is folded in, so
    /// that the rotation needs only the halves swapped.
    sin: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// Tables for positions `0..context`, computed in f64 on the host, stored as `dtype`.
    pub fn new(inv_freq: &[f64], context: usize, device: &B::Device, dtype: DType) -> Self {
        let head_dim = inv_freq.len() * 2;
        let mut cos = Vec::with_capacity(context * head_dim);
        let mut sin = Vec::with_capacity(context * head_dim);
        for pos in 0..context {
            for sign in [-1.0, 1.0] {
                for &f in inv_freq {
                    let angle = pos as f64 * f;
                    cos.push(angle.cos() as f32);
                    sin.push((sign * angle.sin()) as f32);
                }
            }
        }
        let table = |v| Tensor::from_data(TensorData::new(v, [context, head_dim]), (device, dtype));
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// cos and sin `[1, 1, seq, head_dim]` of positions `start..start + seq`.
    pub fn tables(&self, start: usize, seq: usize) -> RopeTables<B> {
        RopeTables {
            cos: self.cos.clone().narrow(0, start, seq).unsqueeze::<4>(),
            sin: self.sin.clone().narrow(0, start, seq).unsqueeze::<4>(),
        }
    }

    /// cos and sin `[1, 1, 1, head_dim]` of the position held on the device in `pos: [1]`
    /// (a decode step whose position must not be a host value; see [`crate::graph`]).
    pub fn tables_at(&self, pos: Tensor<B, 1, Int>) -> RopeTables<B> {
        RopeTables {
            cos: self.cos.clone().select(0, pos.clone()).unsqueeze::<4>(),
            sin: self.sin.clone().select(0, pos).unsqueeze::<4>(),
        }
    }

    /// cos and sin `[rows, 1, 1, head_dim]`, row `i` at `positions[i]` (one token of each
    /// of several sequences, each at its own position).
    pub fn tables_rows(&self, positions: &[usize]) -> RopeTables<B> {
        let n = positions.len();
        let ids: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &self.cos.device());
        let [_, dim] = self.cos.dims();
        RopeTables {
            cos: self
                .cos
                .clone()
                .select(0, ids.clone())
                .reshape([n, 1, 1, dim]),
            sin: self.sin.clone().select(0, ids).reshape([n, 1, 1, dim]),
        }
    }

    /// Positions the tables cover.
    pub fn context(&self) -> usize {
        self.cos.dims()[0]
    }
}
