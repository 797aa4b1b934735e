//! The shared model suite on libtorch's CPU device, in f32, bf16 and f16.

use ember::DType;
use ember_tests::{backend_suite, spec, Ctx};

fn ctx(dtype: DType, logits_tol: f32, min_top1: f32) -> Ctx<ember_tch::Backend> {
    let init =
        ember_tch::init(&spec("tch", "cpu", dtype)).expect("libtorch runs this dtype on the CPU");
    Ctx::new(init, ember_tch::capabilities, logits_tol, min_top1)
}

backend_suite!(f32, ember_tch::Backend, ctx(DType::F32, 1e-4, 1.0));
// The reduced precisions run the real models' first case only: their long cases (Gemma 3's
// 717-token prompt past the sliding window, Whisper's long form) run in f32 here and on
// every CPU backend, and libtorch's CPU matmuls in bf16 and f16 are the slowest part of CI
// (stop 27's CI took 3677 s of its 3600 s goal).
backend_suite!(
    bf16,
    ember_tch::Backend,
    ctx(DType::Bf16, 0.5, 0.8).short_cases()
);
backend_suite!(
    f16,
    ember_tch::Backend,
    ctx(DType::F16, 1e-1, 0.9).short_cases()
);
