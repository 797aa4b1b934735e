//! Projection weights, dense in the run's dtype or kept quantized on the device
//! (`[model] weights = "keep"`).
//!
//! A kept weight is the GGUF blocks decoded once at load into integers, one scale and one
//! offset per group ([`Unpacked`]), with the integers packed into f32 words: `24 / bits` of
//! them per word, so that every word is an integer below 2^24, which f32 holds exactly. That
//! form runs on every backend (candle and libtorch have no quantized tensors in burn 0.21,
//! and not every device has 8-bit integers): the weight is dequantized with element-wise
//! burn ops when used (powers of two multiply exactly, `floor` is exact), then multiplied
//! in the run's dtype. It saves memory, not time. A backend with kernels of its own for
//! quantized blocks offers them through [`FusedOps::quantized`]: the weight is then a
//! [`Native`] one, which its kernels multiply without dequantizing it (flex on x86-64:
//! `ember-kernels`). Float weights (GGUF F32 and F16) kept as stored go the same way where
//! the backend takes them ([`FusedOps::dense`]; flex: `ember_kernels::dense` for a few
//! inputs).

use std::any::Any;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::{DType, TensorData};

use crate::format::quant::Unpacked;
use crate::nn::{linear_add_with, linear_with, FusedOps};

/// A `[in, out]` projection: `x.matmul(w)`.
#[derive(Debug, Clone)]
pub enum Weight<B: Backend> {
    /// Dense, `[in, out]`, in the run's dtype.
    Dense(Tensor<B, 2>),
    /// Kept quantized; rows are the output features.
    Quantized(QuantizedWeight<B>),
    /// Kept in the backend's own quantized form ([`FusedOps::quantized`]).
    Native(Native<B>),
    /// Several projections of the same input side by side (q, k and v of different types),
    /// their outputs concatenated.
    Concat(Vec<Weight<B>>),
}

impl<B: Backend> Weight<B> {
    /// Projections of one input side by side: one matrix when all are dense, or quantized
    /// alike; else computed in turn and concatenated.
    pub fn concat(parts: Vec<Weight<B>>) -> Self {
        let dense: Option<Vec<Tensor<B, 2>>> = parts
            .iter()
            .map(|w| match w {
                Weight::Dense(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        if let Some(dense) = dense {
            return Weight::Dense(Tensor::cat(dense, 1));
        }
        let quantized: Option<Vec<&QuantizedWeight<B>>> = parts
            .iter()
            .map(|w| match w {
                Weight::Quantized(q) => Some(q),
                _ => None,
            })
            .collect();
        if let Some(q) = quantized.and_then(|q| QuantizedWeight::cat(&q)) {
            return Weight::Quantized(q);
        }
        let native: Option<Vec<&Native<B>>> = parts
            .iter()
            .map(|w| match w {
                Weight::Native(n) => Some(n),
                _ => None,
            })
            .collect();
        match native.and_then(|n| n.first().and_then(|first| first.0.stack(&n[1..]))) {
            Some(n) => Weight::Native(n),
            None => Weight::Concat(parts),
        }
    }

    /// `x.matmul(w)` for `x: [batch, seq, in]` -> `[batch, seq, out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, None)
    }

    /// [`Weight::forward`] through `fused` where the backend has its own op for a dense
    /// weight ([`FusedOps::linear`]: a decode step's matrix-vector kernel).
    pub fn forward_with(&self, x: Tensor<B, 3>, fused: Option<&dyn FusedOps<B>>) -> Tensor<B, 3> {
        match self {
            Weight::Dense(w) => linear_with(x, w, fused),
            Weight::Quantized(q) => {
                let [batch, seq, features] = x.dims();
                x.reshape([batch * seq, features])
                    .matmul(q.dequantize().transpose())
                    .reshape([batch, seq, q.out_features])
            }
            Weight::Native(n) => {
                let [batch, seq, features] = x.dims();
                let [out, _] = n.0.shape();
                n.0.forward(x.reshape([batch * seq, features]))
                    .reshape([batch, seq, out])
            }
            Weight::Concat(parts) => Tensor::cat(
                parts
                    .iter()
                    .map(|w| w.forward_with(x.clone(), fused))
                    .collect(),
                2,
            ),
        }
    }

    /// `residual + x.matmul(w)`, one op where the backend can (dense weights).
    pub fn forward_add(
        &self,
        residual: Tensor<B, 3>,
        x: Tensor<B, 3>,
        fused: Option<&dyn FusedOps<B>>,
    ) -> Tensor<B, 3> {
        match self {
            Weight::Dense(w) => linear_add_with(residual, x, w, fused),
            _ => residual.add(self.forward(x)),
        }
    }

    /// Whether the weight is kept quantized (then a tied output projection shares the
    /// embedding's memory: [`Embedding::tied`]).
    pub fn is_quantized(&self) -> bool {
        match self {
            Weight::Dense(_) => false,
            Weight::Quantized(_) | Weight::Native(_) => true,
            Weight::Concat(parts) => parts.iter().all(Weight::is_quantized),
        }
    }

    /// Number of weights.
    pub fn num_params(&self) -> usize {
        match self {
            Weight::Dense(w) => w.dims().iter().product(),
            Weight::Quantized(q) => q.out_features * q.in_features,
            Weight::Native(n) => n.0.shape().iter().product(),
            Weight::Concat(parts) => parts.iter().map(Weight::num_params).sum(),
        }
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::Dense(w) => w.dims().iter().product::<usize>() * w.dtype().size(),
            Weight::Quantized(q) => q.bytes(),
            Weight::Native(n) => n.0.bytes(),
            Weight::Concat(parts) => parts.iter().map(Weight::bytes).sum(),
        }
    }
}

/// Most elements one weight tensor holds; a larger matrix is split by rows into several
/// (2^25: 128 MiB in f32, WebGPU's default limit on one storage buffer binding, which a
/// 262,144-token embedding of width 640 exceeds five times over).
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 25;

/// Rows per part when a `[rows, cols]` matrix is split to stay under
/// [`MAX_TENSOR_ELEMENTS`] (all of them when it fits).
pub fn rows_per_part(rows: usize, cols: usize) -> usize {
    if rows.saturating_mul(cols) <= MAX_TENSOR_ELEMENTS {
        rows.max(1)
    } else {
        (MAX_TENSOR_ELEMENTS / cols.max(1)).max(1)
    }
}

/// A token embedding `[vocab, hidden]`: its rows are looked up; a tied output projection
/// shares it when kept quantized.
#[derive(Debug, Clone)]
pub enum Embedding<B: Backend> {
    /// Dense, `[vocab, hidden]`, in the run's dtype.
    Dense(Tensor<B, 2>),
    /// Kept quantized, one row per token.
    Quantized(QuantizedWeight<B>),
    /// Kept in the backend's own quantized form ([`FusedOps::quantized`]).
    Native(Native<B>),
    /// Split by rows (a large vocabulary; see [`MAX_TENSOR_ELEMENTS`]): consecutive parts.
    Parts(Vec<Embedding<B>>),
}

impl<B: Backend> Embedding<B> {
    /// The rows of `ids: [n]`: `[n, hidden]` in the run's dtype.
    pub fn lookup(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        match self {
            Embedding::Dense(t) => t.clone().select(0, ids),
            Embedding::Quantized(q) => q.rows(ids),
            Embedding::Native(n) => n.0.rows(ids),
            Embedding::Parts(parts) => {
                // Each part looks up the ids in its range (others clamped into it, then
                // zeroed); the parts' rows add up to the looked-up rows.
                let mut start = 0i64;
                let mut sum: Option<Tensor<B, 2>> = None;
                for part in parts {
                    let rows = part.rows() as i64;
                    let local = ids.clone().sub_scalar(start);
                    let outside = local
                        .clone()
                        .lower_elem(0)
                        .bool_or(local.clone().greater_equal_elem(rows));
                    let found = part.lookup(local.clamp(0, rows - 1));
                    let [n, width] = found.dims();
                    let found =
                        found.mask_fill(outside.unsqueeze_dim::<2>(1).expand([n, width]), 0.0);
                    sum = Some(match sum {
                        Some(s) => s.add(found),
                        None => found,
                    });
                    start += rows;
                }
                sum.unwrap_or_else(|| Tensor::zeros([0, 0], &ids.device()))
            }
        }
    }

    /// Rows (tokens).
    pub fn rows(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.dims()[0],
            Embedding::Quantized(q) => q.out_features,
            Embedding::Native(n) => n.0.shape()[0],
            Embedding::Parts(parts) => parts.iter().map(Embedding::rows).sum(),
        }
    }

    /// The run's dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Embedding::Dense(t) => t.dtype(),
            Embedding::Quantized(q) => q.dtype,
            Embedding::Native(n) => n.0.dtype(),
            Embedding::Parts(parts) => parts.first().map_or(DType::F32, Embedding::dtype),
        }
    }

    /// Number of weights.
    pub fn num_params(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.dims().iter().product(),
            Embedding::Quantized(q) => q.out_features * q.in_features,
            Embedding::Native(n) => n.0.shape().iter().product(),
            Embedding::Parts(parts) => parts.iter().map(Embedding::num_params).sum(),
        }
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.dims().iter().product::<usize>() * t.dtype().size(),
            Embedding::Quantized(q) => q.bytes(),
            Embedding::Native(n) => n.0.bytes(),
            Embedding::Parts(parts) => parts.iter().map(Embedding::bytes).sum(),
        }
    }

    /// The output projection tied to this embedding, when it can share its memory (kept
    /// quantized); a dense embedding's transpose is the loader's to make.
    pub fn tied(&self) -> Option<Weight<B>> {
        match self {
            Embedding::Quantized(q) => Some(Weight::Quantized(q.clone())),
            Embedding::Native(n) => Some(Weight::Native(n.clone())),
            Embedding::Dense(_) => None,
            Embedding::Parts(parts) => parts
                .iter()
                .map(Embedding::tied)
                .collect::<Option<Vec<_>>>()
                .map(Weight::Concat),
        }
    }
}

/// A backend's own form of a quantized `[out, in]` weight, made by
/// [`FusedOps::quantized`], or of a float one kept in its stored type, made by
/// [`FusedOps::dense`]: its kernels multiply by it and look its rows up without
/// dequantizing or widening the whole weight.
pub trait NativeQuantized<B: Backend>: Send + Sync + 'static {
    /// `x: [n, in]` in the run's dtype times the weight's transpose: `[n, out]`.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2>;
    /// Rows `ids: [n]` as `[n, in]` in the run's dtype (an id past the last row gives a row
    /// of zeros, as [`Embedding::Parts`] does).
    fn rows(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2>;
    /// `[out, in]`.
    fn shape(&self) -> [usize; 2];
    /// Bytes held.
    fn bytes(&self) -> usize;
    /// The run's dtype (what `forward` and `rows` return).
    fn dtype(&self) -> DType;
    /// `x + y` (both `[n, in]`) and the product of its RMSNorm (with `weight`, `eps`) by
    /// the weight as one op: `(x + y, product)`; `None` where the kernels have no such op
    /// (then [`crate::nn::add_rms_norm_with`] and [`NativeQuantized::forward`]).
    fn add_rms_norm_forward(
        &self,
        x: &Tensor<B, 2>,
        y: &Tensor<B, 2>,
        weight: &Tensor<B, 1>,
        eps: f64,
    ) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
        let _ = (x, y, weight, eps);
        None
    }
    /// [`crate::nn::gated`] of `gate_up: [n, 2 in]` times the weight's transpose as one op;
    /// `None` where the kernels have no such op.
    fn gated_forward(&self, gate_up: &Tensor<B, 2>, act: crate::nn::Gate) -> Option<Tensor<B, 2>> {
        let _ = (gate_up, act);
        None
    }
    /// This weight with `others` below it (q, k and v as one), when the kernels can.
    fn stack(&self, others: &[&Native<B>]) -> Option<Native<B>> {
        let _ = others;
        None
    }
    /// For [`NativeQuantized::stack`]: the concrete type behind `others`.
    fn as_any(&self) -> &dyn Any;
}

/// A [`NativeQuantized`] weight as a model holds it.
#[derive(Clone)]
pub struct Native<B: Backend>(pub Arc<dyn NativeQuantized<B>>);

impl<B: Backend> std::fmt::Debug for Native<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Native({:?})", self.0.shape())
    }
}

/// A `[out, in]` weight kept as packed integers with a scale and an offset per group of
/// `group` values along `in` (see the module docs).
#[derive(Debug, Clone)]
pub struct QuantizedWeight<B: Backend> {
    /// `[out, words]`: integers of `bits` bits, `per_word` per f32 word, first in the low
    /// bits.
    packed: Tensor<B, 2>,
    /// `[out, in / group]`, f32.
    scale: Tensor<B, 2>,
    /// `[out, in / group]`, f32.
    min: Tensor<B, 2>,
    bits: u32,
    group: usize,
    out_features: usize,
    in_features: usize,
    /// What [`QuantizedWeight::dequantize`] returns.
    dtype: DType,
}

impl<B: Backend> QuantizedWeight<B> {
    /// Packs `unpacked` (`[out, in]`, groups along `in`) onto `device`; dequantized weights
    /// come out as `dtype`.
    pub fn new(
        unpacked: &Unpacked,
        [out_features, in_features]: [usize; 2],
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        let (bits, group) = (unpacked.bits, unpacked.group);
        let per_word = (24 / bits) as usize;
        let words = in_features.div_ceil(per_word);
        let mut packed = Vec::with_capacity(out_features * words);
        for row in unpacked.u.chunks_exact(in_features) {
            packed.extend(row.chunks(per_word).map(|digits| {
                let word = digits
                    .iter()
                    .rev()
                    .fold(0u32, |acc, &u| (acc << bits) | u32::from(u));
                word as f32
            }));
        }
        let groups = in_features / group;
        let f32_tensor = |values: Vec<f32>, cols: usize| {
            Tensor::from_data(
                TensorData::new(values, [out_features, cols]),
                (device, DType::F32),
            )
        };
        Self {
            packed: f32_tensor(packed, words),
            scale: f32_tensor(unpacked.scale.clone(), groups),
            min: f32_tensor(unpacked.min.clone(), groups),
            bits,
            group,
            out_features,
            in_features,
            dtype,
        }
    }

    /// Weights stacked by rows (q, k and v), when all are packed alike.
    fn cat(parts: &[&QuantizedWeight<B>]) -> Option<Self> {
        let first = parts.first()?;
        let alike = parts.iter().all(|q| {
            (q.bits, q.group, q.in_features, q.dtype)
                == (first.bits, first.group, first.in_features, first.dtype)
        });
        if !alike {
            return None;
        }
        let stack = |f: fn(&QuantizedWeight<B>) -> &Tensor<B, 2>| {
            Tensor::cat(parts.iter().map(|q| f(q).clone()).collect(), 0)
        };
        Some(Self {
            packed: stack(|q| &q.packed),
            scale: stack(|q| &q.scale),
            min: stack(|q| &q.min),
            out_features: parts.iter().map(|q| q.out_features).sum(),
            ..(*first).clone()
        })
    }

    /// The whole weight, `[out, in]`, in the run's dtype.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        self.decode(
            self.packed.clone(),
            self.scale.clone(),
            self.min.clone(),
            self.out_features,
        )
    }

    /// Rows `ids: [n]`, `[n, in]`, in the run's dtype.
    pub fn rows(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let n = ids.dims()[0];
        self.decode(
            self.packed.clone().select(0, ids.clone()),
            self.scale.clone().select(0, ids.clone()),
            self.min.clone().select(0, ids),
            n,
        )
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> usize {
        [&self.packed, &self.scale, &self.min]
            .iter()
            .map(|t| t.dims().iter().product::<usize>() * 4)
            .sum()
    }

    /// `scale * u + min` of `rows` rows of packed words.
    fn decode(
        &self,
        packed: Tensor<B, 2>,
        scale: Tensor<B, 2>,
        min: Tensor<B, 2>,
        rows: usize,
    ) -> Tensor<B, 2> {
        let per_word = (24 / self.bits) as usize;
        let words = packed.dims()[1];
        let radix = f64::from(1u32 << self.bits);
        // Integer j of a word: floor(word / radix^j) mod radix, by exact multiplications by
        // powers of two and floors.
        let digits = (0..per_word)
            .map(|j| {
                let shifted = packed.clone().mul_scalar(radix.powi(-(j as i32))).floor();
                let above = shifted.clone().mul_scalar(1.0 / radix).floor();
                shifted.sub(above.mul_scalar(radix))
            })
            .collect();
        let groups = self.in_features / self.group;
        // [rows, words, per_word] -> [rows, in]
        let u = Tensor::stack::<3>(digits, 2)
            .reshape([rows, words * per_word])
            .narrow(1, 0, self.in_features)
            .reshape([rows, groups, self.group]);
        u.mul(scale.unsqueeze_dim(2))
            .add(min.unsqueeze_dim(2))
            .reshape([rows, self.in_features])
            .cast(self.dtype)
    }
}
