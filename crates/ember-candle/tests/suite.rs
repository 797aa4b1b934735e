//! The shared model suite on candle's CPU device, in f32 and f16.

use ember::DType;
use ember_tests::{backend_suite, spec, Ctx};

fn ctx(dtype: DType, logits_tol: f32, min_top1: f32) -> Ctx<ember_candle::Backend> {
    let init = ember_candle::init(&spec("candle", "cpu", dtype))
        .expect("candle runs this dtype on the CPU");
    Ctx::new(init, ember_candle::capabilities, logits_tol, min_top1)
}

backend_suite!(f32, ember_candle::Backend, ctx(DType::F32, 1e-4, 1.0));
// f16 runs the real models' first case only (CI time): the long cases run in f32 here and on
// the other CPU backends.
backend_suite!(
    f16,
    ember_candle::Backend,
    ctx(DType::F16, 1e-1, 0.9).short_cases()
);
