//! The shared model suite on wgpu: on Linux CI, Vulkan through Mesa's lavapipe (a real
//! Vulkan driver on the CPU); f32 and f16 (lavapipe has no bf16).

use ember::DType;
use ember_tests::{backend_suite, spec, Ctx};

fn ctx(dtype: DType, logits_tol: f32, min_top1: f32) -> Ctx<ember_wgpu::Backend> {
    let init = ember_wgpu::init(&spec(
        "wgpu",
        &std::env::var("EMBER_TEST_WGPU_DEVICE").unwrap_or_else(|_| "auto".into()),
        dtype,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    // lavapipe runs ~10 GFLOP/s: the real models' long prompts run on the CPU backends.
    Ctx::new(init, ember_wgpu::capabilities, logits_tol, min_top1).short_cases()
}

backend_suite!(f32, ember_wgpu::Backend, ctx(DType::F32, 1e-4, 1.0));
backend_suite!(f16, ember_wgpu::Backend, ctx(DType::F16, 1e-1, 0.9));
