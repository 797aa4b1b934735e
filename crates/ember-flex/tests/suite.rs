//! The shared model suite on flex, in f32 and in the reduced precisions flex supports.
//!
//! Tolerances (max abs logit error against `transformers` in f32, and top-1 agreement):
//! f32 1e-4 and exact greedy tokens; f16 and bf16 see the README's precision table.

use ember::DType;
use ember_tests::{backend_suite, spec, Ctx};

fn ctx(dtype: DType, logits_tol: f32, min_top1: f32) -> Ctx<ember_flex::Backend> {
    let init = ember_flex::init(&spec("flex", "cpu", dtype)).expect("flex runs this dtype");
    Ctx::new(init, ember_flex::capabilities, logits_tol, min_top1)
}

backend_suite!(f32, ember_flex::Backend, ctx(DType::F32, 1e-4, 1.0));
// The reduced precisions run the real models' first case only, as on candle and tch (CI
// time: this suite took 252 s of a CI run that passed its limit); the long cases (Gemma 3's
// prompt past the sliding window, Whisper's long form) run in f32 here and on every CPU
// backend.
backend_suite!(
    f16,
    ember_flex::Backend,
    ctx(DType::F16, 1e-1, 0.9).short_cases()
);
backend_suite!(
    bf16,
    ember_flex::Backend,
    ctx(DType::Bf16, 5e-1, 0.8).short_cases()
);
