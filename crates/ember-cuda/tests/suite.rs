//! The shared model suite on CubeCL CUDA, f32 and f16. Needs an NVIDIA GPU: on a machine
//! without one (CI here) the suite is not run; see the README's GPU table for where it ran.
#![cfg(feature = "gpu-tests")]

use ember::DType;
use ember_tests::{backend_suite, spec, Ctx};

fn ctx(dtype: DType, logits_tol: f32, min_top1: f32) -> Ctx<ember_cuda::Backend> {
    let init = ember_cuda::init(&spec("cuda", "cuda:0", dtype)).unwrap_or_else(|e| panic!("{e}"));
    Ctx::new(init, ember_cuda::capabilities, logits_tol, min_top1)
}

backend_suite!(f32, ember_cuda::Backend, ctx(DType::F32, 1e-4, 1.0));
backend_suite!(f16, ember_cuda::Backend, ctx(DType::F16, 1e-1, 0.9));
