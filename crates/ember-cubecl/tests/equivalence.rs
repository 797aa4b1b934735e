//! Each CubeCL kernel against the portable composition of burn ops it replaces, run for real
//! on wgpu (Mesa's lavapipe in CI, which has no plane operations: the shared-memory
//! reductions run), in f16 here and in f32 in tests/bare.rs, on the odd shapes a decode step
//! meets: hidden sizes that are not multiples of the vector width or of the cube, strided
//! inputs, head_dim 64 and 256, grouped-query ratios 1, 3 and 4 and one KV head, keys past a
//! chunk of the cube and past a sliding window's edge.
//!
//! Tolerances (max absolute difference, values of order 1; relative to values above 1 for the
//! gated activation, whose products reach 10^4 in its wide-range case): f32 1e-5 for RMSNorm,
//! RoPE and the gated activation and 1e-4 for attention (sums of up to 1000 products in another order)
//! and for the quantized products of rows past 1024 features; f16 1e-2: the
//! kernels round once, the portable path after every op (RMSNorm's normed value is rounded to
//! f16 before the weight multiplies it; attention's scores and probabilities are f16 between
//! its two matmuls; RoPE's two products and their sum; the activation's sigmoid, its product
//! with the gate and the product with up), which is up to a few f16 ulps
//! (2^-10 relative) of each output. Values written to the KV cache unchanged (v) and the
//! cache's other positions must be equal exactly.

// ember-wgpu is linked for its compiled code alone: a debug build (opt-level 1) shares the
// generic instances a dependency made, so the kernels' code for wgpu's runtime, which
// ember-wgpu instantiates for burn's `Wgpu`, is not compiled a second time here.
use ember_wgpu as _;

/// The backend: burn's `Wgpu`, where each op is a custom operation in burn-fusion's stream.
type B = burn::backend::Wgpu;

/// The f16 cases run here; the f32 ones in tests/bare.rs (CI time: lavapipe runs ~10
/// GFLOP/s). The kernels are the same on both backends, and the fusion wrapper's glue in f32
/// is what ember-wgpu's suite runs (tiny models and SmolLM2 against `transformers`).
macro_rules! f16_cases {
    ($($case:tt)*) => { $($case)* };
}

/// See `f16_cases`.
macro_rules! f32_cases {
    ($($case:tt)*) => {};
}

include!("equivalence/cases.rs");
