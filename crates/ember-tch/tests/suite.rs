//! The shared model suite on libtorch's CPU device, in f32, bf16 and f16.

use ember::DType;
use ember_tests::{backend_suite, spec, Ctx};

fn ctx(dtype: DType, logits_tol: f32, min_top1: f32) -> Ctx<ember_tch::Backend> {
    let init =
        ember_tch::init(&spec("tch", "cpu", dtype)).expect("libtorch runs this dtype on the CPU");
    Ctx::new(init, ember_tch::capabilities, logits_tol, min_top1)
}

backend_suite!(f32, ember_tch::Backend, ctx(DType::F32, 1e-4, 1.0));
backend_suite!(bf16, ember_tch::Backend, ctx(DType::Bf16, 0.5, 0.8));
backend_suite!(f16, ember_tch::Backend, ctx(DType::F16, 1e-1, 0.9));
