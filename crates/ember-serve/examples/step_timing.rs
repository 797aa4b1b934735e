//! Times one decode step of n sequences in the rows of one slot cache against n single steps
//! (a measurement for the batching work; prints numbers).
//! `cargo run --release -p ember-serve --example step_timing -- configs/cpu-f32-keep.toml`

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use ember::models::Logits;
use ember::{Engine, EngineConfig};

fn main() -> ember::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "configs/cpu-f32-keep.toml".into());
    let config = EngineConfig::from_file(path.as_ref())?;
    let (device, runtime) = ember_flex::init(&config.backend)?;
    let capabilities = ember_flex::capabilities(&device);
    let engine = Engine::<ember_flex::Backend>::load(&config, &device, runtime, &capabilities)?;
    let model = engine.model();
    let prompt = engine
        .tokenizer()
        .encode("Once upon a time, there was", true)?;
    let b = |ids: Vec<i64>, shape: [usize; 2]| {
        Tensor::<ember_flex::Backend, 2, Int>::from_data(TensorData::new(ids, shape), &device)
    };
    for n in [1usize, 2, 4, 8, 16] {
        // n sequences in the rows of one slot cache, each after the same prompt.
        let mut slots = engine.new_slot_cache(n, 256);
        let len = prompt.len();
        let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        for row in 0..n {
            slots.next_row(row, 0);
            model.forward(
                b(ids.clone(), [1, len]),
                &mut slots,
                engine.attention(),
                Logits::Last,
            )?;
        }
        let mut alone: Vec<_> = (0..n).map(|_| engine.new_cache()).collect();
        for cache in alone.iter_mut() {
            model.forward(
                b(ids.clone(), [1, len]),
                cache,
                engine.attention(),
                Logits::Last,
            )?;
        }
        let steps = 20;
        let start = Instant::now();
        for s in 0..steps {
            slots.next_rows(vec![len + s; n]);
            let logits = model.forward(
                b(vec![42; n], [n, 1]),
                &mut slots,
                engine.attention(),
                Logits::Last,
            )?;
            let _: Vec<f32> = logits.into_data().iter::<f32>().collect();
        }
        let batched = start.elapsed().as_secs_f64() / steps as f64;
        let start = Instant::now();
        for _ in 0..steps {
            for cache in alone.iter_mut() {
                let logits =
                    model.forward(b(vec![42], [1, 1]), cache, engine.attention(), Logits::Last)?;
                let _: Vec<f32> = logits.into_data().iter::<f32>().collect();
            }
        }
        let alone = start.elapsed().as_secs_f64() / steps as f64;
        println!(
            "n={n:2}: batched step {:6.1} ms ({:6.1} t/s) | {n} single steps {:6.1} ms ({:6.1} t/s) | {:.2}x",
            batched * 1e3,
            n as f64 / batched,
            alone * 1e3,
            n as f64 / alone,
            alone / batched
        );
    }
    Ok(())
}
