//! libtorch's fused ops as Ember's [`FusedOps`]: RMSNorm (`at::_fused_rms_norm`: one CUDA
//! kernel; a composition of ATen ops on other devices), two of a decoded layer's ~36
//! libtorch ops instead of 18 (docs/performance.md, change 9); a projection added to the
//! residual as one `addmm` (change 10); attention with an additive bias as one
//! `scaled_dot_product_attention` (burn-tch's op decomposes into ~9 ops when given a bias;
//! change 11).

use burn::backend::libtorch::TchTensor;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use ember::nn::FusedOps;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::TchError;

use crate::Backend as Tch;

/// libtorch's fused ops. One that fails (an op a device lacks) is reported once and left to
/// burn's ops from then on.
#[derive(Debug, Default)]
pub struct TchFused {
    failed: [AtomicBool; 3],
}

const RMS_NORM: usize = 0;
const LINEAR_ADD: usize = 1;
const ATTENTION: usize = 2;
const NAMES: [&str; 3] = ["fused RMSNorm", "addmm", "scaled_dot_product_attention"];

impl TchFused {
    fn attempt<T>(&self, op: usize, run: impl FnOnce() -> Result<T, TchError>) -> Option<T> {
        if self.failed[op].load(Ordering::Relaxed) {
            return None;
        }
        run()
            .map_err(|e| {
                self.failed[op].store(true, Ordering::Relaxed);
                tracing::warn!(
                    "libtorch's {} failed, burn's ops run it instead: {e}",
                    NAMES[op]
                );
            })
            .ok()
    }
}

fn torch(t: TensorPrimitive<Tch>) -> tch::Tensor {
    t.tensor().tensor.shallow_clone()
}

fn float<const D: usize>(t: tch::Tensor) -> Tensor<Tch, D> {
    Tensor::from_primitive(TensorPrimitive::Float(TchTensor::new(t)))
}

impl FusedOps<Tch> for TchFused {
    fn rms_norm(
        &self,
        x: &Tensor<Tch, 3>,
        weight: &Tensor<Tch, 1>,
        eps: f64,
    ) -> Option<Tensor<Tch, 3>> {
        let [_, _, hidden] = x.dims();
        let input = torch(x.clone().into_primitive());
        let weight = torch(weight.clone().into_primitive());
        let (out, _rstd) = self.attempt(RMS_NORM, || {
            input.f_internal_fused_rms_norm([hidden as i64].as_slice(), Some(&weight), eps)
        })?;
        Some(float(out))
    }

    fn linear_add(
        &self,
        residual: &Tensor<Tch, 3>,
        x: &Tensor<Tch, 3>,
        w: &Tensor<Tch, 2>,
    ) -> Option<Tensor<Tch, 3>> {
        let [batch, seq, features] = x.dims();
        let out = w.dims()[1];
        let rows = (batch * seq) as i64;
        let input = torch(x.clone().into_primitive());
        let acc = torch(residual.clone().into_primitive());
        let weight = torch(w.clone().into_primitive());
        let sum = self.attempt(LINEAR_ADD, || {
            let input = input.f_reshape([rows, features as i64])?;
            acc.f_reshape([rows, out as i64])?
                .f_addmm(&input, &weight)?
                .f_reshape([batch as i64, seq as i64, out as i64])
        })?;
        Some(float(sum))
    }

    fn attention(
        &self,
        q: &Tensor<Tch, 4>,
        k: &Tensor<Tch, 4>,
        v: &Tensor<Tch, 4>,
        bias: Option<&Tensor<Tch, 4>>,
    ) -> Option<Tensor<Tch, 4>> {
        let [q, k, v] = [q, k, v].map(|t| torch(t.clone().into_primitive()));
        let bias = bias.map(|b| torch(b.clone().into_primitive()));
        let out = self.attempt(ATTENTION, || {
            tch::Tensor::f_scaled_dot_product_attention(&q, &k, &v, bias, 0.0, false, None, false)
        })?;
        Some(float(out))
    }
}
