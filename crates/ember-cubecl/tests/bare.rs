//! The kernels' equivalence cases (tests/equivalence.rs, whose header says what they check
//! and with which tolerances) on a bare `CubeBackend` over wgpu: no burn-fusion wrapper, so
//! each op launches at once from the caller's thread ([`ember_cubecl::CubeHost`]), the way
//! `ember-cuda` runs them. The kernels are the same on both backends; what differs is how
//! inputs reach them and outputs come back (and whether a KV cache is written in place), so
//! the f32 cases of every op run here, and the f16 ones in tests/equivalence.rs, each only
//! once (CI time: lavapipe runs ~10 GFLOP/s).

// ember-wgpu is linked for its compiled code alone: a debug build (opt-level 1) shares the
// generic instances a dependency made, so the kernels' code for wgpu's runtime, which
// ember-wgpu instantiates for burn's `Wgpu`, is not compiled a second time here.
use ember_wgpu as _;

/// The backend: burn's wgpu backend without its fusion wrapper.
type B = ember_cubecl::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// The f32 cases run here (and not in tests/equivalence.rs).
macro_rules! f32_cases {
    ($($case:tt)*) => { $($case)* };
}

/// The f16 cases are left to tests/equivalence.rs (see above).
macro_rules! f16_cases {
    ($($case:tt)*) => {};
}

include!("equivalence/cases.rs");
