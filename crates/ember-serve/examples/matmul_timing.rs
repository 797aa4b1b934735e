//! Times flex's f32 matmul `[n, k] x [k, m]` for growing n (a measurement).
use std::time::Instant;

use burn::prelude::*;

type B = ember_flex::Backend;

fn main() {
    let device = Default::default();
    for (k, m) in [(576usize, 1536usize), (576, 49152)] {
        let w = Tensor::<B, 2>::random([k, m], burn::tensor::Distribution::Default, &device);
        for n in [1usize, 2, 4, 8, 16] {
            let x = Tensor::<B, 3>::random([1, n, k], burn::tensor::Distribution::Default, &device);
            let reps = 20;
            let start = Instant::now();
            for _ in 0..reps {
                let y = x.clone().matmul(w.clone().unsqueeze::<3>());
                let _: Vec<f32> = y.into_data().iter::<f32>().take(1).collect();
            }
            let t = start.elapsed().as_secs_f64() / reps as f64;
            println!("[{n}, {k}] x [{k}, {m}]: {:.3} ms", t * 1e3);
        }
    }
}
