//! Layers shared by model families.

pub mod attention;
pub mod kv_cache;
pub mod rope;

use burn::prelude::*;
use burn::tensor::FloatDType;

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`, with the mean square taken in f32
/// whatever the run's dtype.
///
/// `x`: `[batch, seq, hidden]`; `weight`: `[hidden]`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let xf = x.cast(FloatDType::F32);
    let rms = xf.clone().square().mean_dim(2).add_scalar(eps).sqrt();
    let normed = xf.div(rms).cast(dtype);
    normed.mul(weight.clone().unsqueeze::<3>())
}

/// `x.matmul(w)` for `x: [batch, seq, in]`, `w: [in, out]` -> `[batch, seq, out]`.
pub fn linear<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, seq, features] = x.dims();
    let [_, out] = w.dims();
    x.reshape([batch * seq, features])
        .matmul(w.clone())
        .reshape([batch, seq, out])
}

/// LayerNorm over the last dim, statistics in f32 whatever the run's dtype:
/// `(x - mean) / sqrt(var + eps) * weight + bias`. `x`: `[batch, seq, hidden]`.
pub fn layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let xf = x.cast(FloatDType::F32);
    let mean = xf.clone().mean_dim(2);
    let centered = xf.sub(mean);
    let var = centered.clone().square().mean_dim(2);
    let normed = centered.div(var.add_scalar(eps).sqrt()).cast(dtype);
    normed
        .mul(weight.clone().unsqueeze::<3>())
        .add(bias.clone().unsqueeze::<3>())
}
