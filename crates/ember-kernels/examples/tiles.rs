//! Products of SmolLM2-135M's Q4_1 shapes with 8 and 16 inputs (batched decode steps of
//! the server), with the 2 x 8 tiles on paired inputs (change 46)
//! against the 4 x 4 tiles, alternated in one process on the kernels' pool:
//! `cargo run --release -p ember-kernels --example tiles`. Prints the median time of each
//! per round; a benchmark, not a test.
use std::time::Instant;

use ember_kernels::{set_paired_tiles, Groups, Inputs, Isa, QuantMatrix};

fn main() {
    // (rows, cols): the fused q/k/v projection, o, the fused gate/up and the down projection.
    let shapes = [(960usize, 576usize), (576, 576), (3072, 576), (576, 1536)];
    let matrices: Vec<QuantMatrix> = shapes
        .iter()
        .map(|&(rows, cols)| {
            let n = rows * cols;
            let u: Vec<u8> = (0..n).map(|i| (i * 7 % 16) as u8).collect();
            let scale: Vec<f32> = (0..n / 32).map(|g| 0.01 + (g % 5) as f32 * 1e-3).collect();
            let min = vec![-0.08f32; n / 32];
            let g = Groups {
                bits: 4,
                group: 32,
                u: &u,
                scale: &scale,
                min: &min,
            };
            QuantMatrix::new(g, rows, cols).expect("a Q4_1 matrix")
        })
        .collect();
    let isa = Isa::detect();
    println!(
        "isa {isa:?}, {} threads",
        ember_kernels::Pool::global().threads()
    );
    for n in [8usize, 16] {
        let reps = 200 / (n / 8);
        let inputs: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(_, cols)| {
                (0..n * cols)
                    .map(|i| ((i * 13 % 97) as f32 - 48.0) / 50.0)
                    .collect()
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(rows, _)| vec![0f32; n * rows])
            .collect();
        for round in 0..5 {
            let mut line = format!("n = {n:3}, round {round}:");
            for paired in [false, true] {
                set_paired_tiles(paired);
                let mut times = Vec::new();
                for _ in 0..7 {
                    let start = Instant::now();
                    for _ in 0..reps {
                        for ((m, x), out) in matrices.iter().zip(&inputs).zip(&mut outs) {
                            m.matmul_with(isa, Inputs::Q8, x, n, out);
                        }
                    }
                    times.push(start.elapsed().as_secs_f64() / reps as f64);
                }
                times.sort_by(f64::total_cmp);
                let name = if paired { "2x8" } else { "4x4" };
                line += &format!("  {name} {:7.1} us", times[3] * 1e6);
            }
            println!("{line}");
        }
    }
}
