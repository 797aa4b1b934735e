//! libtorch's fused ops (RMSNorm, matmul into the residual, attention with a bias) against Ember's portable ones
//! (burn ops), per dtype, on random inputs: the equivalence test of those fast paths (on the CPU here; on CUDA too when
//! libtorch sees a GPU).

use burn::prelude::*;
use burn::tensor::Distribution;
use ember::nn::attention::attend_all;
use ember::nn::{linear_add, rms_norm, FusedOps};
use ember::AttentionImpl;
use ember::DType;
use ember_tests::spec;

#[test]
fn fused_ops_equal_portable() {
    let mut devices = vec!["cpu"];
    if tch::Cuda::is_available() {
        devices.push("cuda:0");
    }
    // Largest absolute difference accepted, for outputs of magnitude ~1-3 (weights ~N(1, 0.5)).
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 1e-2), (DType::Bf16, 6e-2)] {
        for device in &devices {
            let (device, runtime) = ember_tch::init(&spec("tch", device, dtype)).unwrap();
            let fused = ember::graph::registered::<dyn FusedOps<ember_tch::Backend>>()
                .expect("ember-tch registers its fused ops in init");
            let burn_dtype = runtime.dtype.to_burn().unwrap();
            let x = Tensor::<ember_tch::Backend, 3>::random(
                [2, 5, 96],
                Distribution::Normal(0.5, 2.0),
                &device,
            )
            .cast(burn_dtype);
            let w = Tensor::<ember_tch::Backend, 1>::random(
                [96],
                Distribution::Normal(1.0, 0.5),
                &device,
            )
            .cast(burn_dtype);
            let got = fused
                .rms_norm(&x, &w, 1e-5)
                .expect("libtorch runs its fused RMSNorm");
            assert_eq!(got.dims(), [2, 5, 96]);
            assert_eq!(got.dtype(), burn_dtype);
            let want: Vec<f32> = rms_norm(x, &w, 1e-5).into_data().iter::<f32>().collect();
            let got: Vec<f32> = got.into_data().iter::<f32>().collect();
            let err = ember_tests::max_abs_diff(&got, &want);
            assert!(
                err <= tol,
                "{dtype} on {}: fused vs portable RMSNorm max error {err}",
                runtime.device
            );
        }
    }
}
