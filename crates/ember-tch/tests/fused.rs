//! libtorch's fused ops (RMSNorm, matmul into the residual, attention with a bias) against Ember's portable ones
//! (burn ops), per dtype, on random inputs: the equivalence test of those fast paths (on the CPU here; on CUDA too when
//! libtorch sees a GPU).

use burn::prelude::*;
use burn::tensor::Distribution;
use ember::nn::attention::{attend_all, padding_bias};
use ember::nn::{linear_add, rms_norm};
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
            let capabilities = ember_tch::capabilities(&device);
            let fused = capabilities
                .fused
                .as_ref()
                .expect("ember-tch offers its fused ops on every device")
                .ops();
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

            let random = |shape: [usize; 3], std: f64| {
                Tensor::<ember_tch::Backend, 3>::random(
                    shape,
                    Distribution::Normal(0.0, std),
                    &device,
                )
                .cast(burn_dtype)
            };
            let (residual, x) = (random([2, 5, 48], 1.0), random([2, 5, 96], 1.0));
            let w = random([1, 96, 48], 0.1).reshape([96, 48]);
            let got = fused
                .linear_add(&residual, &x, &w)
                .expect("libtorch runs addmm");
            assert_eq!(got.dims(), [2, 5, 48]);
            let want: Vec<f32> = linear_add(residual, x, &w)
                .into_data()
                .iter::<f32>()
                .collect();
            let got: Vec<f32> = got.into_data().iter::<f32>().collect();
            let err = ember_tests::max_abs_diff(&got, &want);
            assert!(
                err <= tol,
                "{dtype} on {}: fused vs portable linear_add max error {err}",
                runtime.device
            );

            // The grouped decode layout: [batch, kv_heads, groups, d] over [batch, kv_heads,
            // keys, d], keys from 7 on hidden by the padding bias.
            let random4 = |shape: [usize; 4]| {
                Tensor::<ember_tch::Backend, 4>::random(
                    shape,
                    Distribution::Normal(0.0, 1.0),
                    &device,
                )
                .cast(burn_dtype)
            };
            let (q, k, v) = (
                random4([1, 2, 3, 32]),
                random4([1, 2, 10, 32]),
                random4([1, 2, 10, 32]),
            );
            let bias = padding_bias::<ember_tch::Backend>([1, 2, 3], 7, 10, burn_dtype, &device);
            for bias in [None, Some(&bias)] {
                let got = fused
                    .attention(&q, &k, &v, bias)
                    .expect("libtorch runs sdpa");
                let want = attend_all(q.clone(), k.clone(), v.clone(), bias, AttentionImpl::Plain);
                let want: Vec<f32> = want.into_data().iter::<f32>().collect();
                let got: Vec<f32> = got.into_data().iter::<f32>().collect();
                let err = ember_tests::max_abs_diff(&got, &want);
                let masked = bias.is_some();
                assert!(
                    err <= tol,
                    "{dtype} on {} (bias: {masked}): fused vs plain attention max error {err}",
                    runtime.device
                );
            }
        }
    }
}
