//! With the `cuda-graphs` feature, on a CUDA device: greedy decoding through recorded and
//! replayed decode steps gives the tokens of eager decoding, past a decode-window edge (a
//! second recording), with two sessions decoding on two threads at once (each records and
//! replays on a stream of its own). Without a CUDA device it says so and checks nothing.
#![cfg(feature = "cuda-graphs")]

use ember::{DType, Engine, EngineConfig};
use ember_tests::{greedy, spec};

fn engine(graphs: bool) -> Engine<ember_tch::Backend> {
    let mut config = EngineConfig::default();
    config.model.source = "preset:smollm2-135m,layers=4,vocab=2048".into();
    config.model.context_length = Some(640);
    config.backend = spec("tch", "cuda:0", DType::F32);
    config.backend.graphs = graphs;
    let (device, runtime) = ember_tch::init(&config.backend).unwrap();
    Engine::load(&config, &device, runtime, &ember_tch::capabilities(&device)).unwrap()
}

#[test]
fn graph_replay_equals_eager_across_threads() {
    if !tch::Cuda::is_available() {
        eprintln!("not run: this test needs a CUDA device, and libtorch sees none");
        return;
    }
    let (replayed, eager) = (engine(true), engine(false));
    assert!(replayed.replays_graphs() && !eager.replays_graphs());
    let prompts: [&[u32]; 2] = [&[1, 17, 300, 42], &[5, 6, 7, 8, 9, 1000, 3]];
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&eager, p, 300)).collect();
    let got: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(|| greedy(&replayed, p, 300)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let first = g.iter().zip(w).position(|(a, b)| a != b);
        assert_eq!(first, None, "prompt {i}: replayed and eager tokens differ");
    }
}
