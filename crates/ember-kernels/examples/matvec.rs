//! Rough speed of one matrix-vector product per layout (SmolLM2's 1536 x 576 MLP shape and
//! its 49,152 x 576 output projection), GB/s of weights read; `cargo bench` holds the steady
//! measurements.
use std::time::Instant;

use ember_kernels::{Groups, Isa, QuantMatrix};

fn main() {
    for (rows, cols) in [(1536usize, 576usize), (49152, 576)] {
        for (bits, group, symmetric) in [
            (4u32, 32usize, false),
            (5, 32, false),
            (8, 32, true),
            (6, 16, true),
        ] {
            let n = rows * cols;
            let u: Vec<u8> = (0..n).map(|i| (i * 7 % (1 << bits)) as u8).collect();
            let scale = vec![0.01f32; n / group];
            let min: Vec<f32> = scale
                .iter()
                .map(|&s| {
                    if symmetric {
                        -((1u32 << (bits - 1)) as f32) * s
                    } else {
                        -0.1
                    }
                })
                .collect();
            let m = QuantMatrix::new(
                Groups {
                    bits,
                    group,
                    u: &u,
                    scale: &scale,
                    min: &min,
                },
                rows,
                cols,
            )
            .unwrap();
            let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
            let mut out = vec![0f32; rows];
            for isa in Isa::available() {
                let reps = 200;
                m.matmul_on(isa, &x, 1, &mut out);
                let t = Instant::now();
                for _ in 0..reps {
                    m.matmul_on(isa, &x, 1, &mut out);
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "{rows}x{cols} {:?} {isa:?}: {:.1} us, {:.1} GB/s",
                    m.layout(),
                    s * 1e6,
                    m.bytes() as f64 / s / 1e9
                );
            }
        }
    }
}
