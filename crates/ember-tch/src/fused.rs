//! libtorch's fused RMSNorm (`at::_fused_rms_norm`: one CUDA kernel; a composition of ATen
//! ops on other devices) as Ember's [`FusedOps`]: two of a decoded layer's ~36 libtorch ops
//! instead of 18 (docs/performance.md, change 9).

use burn::backend::libtorch::TchTensor;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use ember::nn::FusedOps;

use crate::Backend as Tch;

/// libtorch's fused ops.
#[derive(Debug, Default)]
pub struct TchFused;

fn torch(t: TensorPrimitive<Tch>) -> tch::Tensor {
    t.tensor().tensor.shallow_clone()
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
        let (out, _rstd) = input
            .f_internal_fused_rms_norm([hidden as i64].as_slice(), Some(&weight), eps)
            .map_err(|e| tracing::warn!("libtorch's fused RMSNorm failed, using burn ops: {e}"))
            .ok()?;
        Some(Tensor::from_primitive(TensorPrimitive::Float(
            TchTensor::new(out),
        )))
    }
}
