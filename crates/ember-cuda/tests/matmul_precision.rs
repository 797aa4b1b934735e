//! Measures how far burn's f32 matmul on CubeCL CUDA is from an f64 host reference, to tell
//! whether f32 inputs run as TF32 (about 1e-3 relative error) or as full f32 (about 1e-6).
//! Needs an NVIDIA GPU; prints the numbers and checks only that the result is sane.
#![cfg(feature = "gpu-tests")]

use burn::prelude::*;
use burn::tensor::Distribution;

#[test]
fn f32_matmul_error_against_f64() {
    let device = burn::backend::cuda::CudaDevice::new(0);
    for n in [64usize, 576, 1536] {
        let a = Tensor::<ember_cuda::Backend, 2>::random(
            [n, n],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let b = Tensor::<ember_cuda::Backend, 2>::random(
            [n, n],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let av: Vec<f32> = a.to_data().iter::<f32>().collect();
        let bv: Vec<f32> = b.to_data().iter::<f32>().collect();
        let got: Vec<f32> = a.matmul(b).into_data().iter::<f32>().collect();
        let mut worst = 0f64;
        for i in (0..n).step_by(7) {
            for j in (0..n).step_by(5) {
                let want: f64 = (0..n)
                    .map(|k| f64::from(av[i * n + k]) * f64::from(bv[k * n + j]))
                    .sum();
                let norm: f64 = (0..n)
                    .map(|k| (f64::from(av[i * n + k]) * f64::from(bv[k * n + j])).abs())
                    .sum();
                worst = worst.max((f64::from(got[i * n + j]) - want).abs() / norm);
            }
        }
        println!("n = {n}: max |error| / sum|a_ik b_kj| = {worst:.3e} (f32 ~ 1e-7, tf32 ~ 5e-4)");
        assert!(worst < 1e-2, "matmul result is wrong, not just imprecise");
    }
}
