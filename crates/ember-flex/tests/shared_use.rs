//! One engine serving many threads, and cancellation (flex, f32: exact results).

use std::sync::atomic::{AtomicUsize, Ordering};

use ember::{CancelToken, DType, Embedder, Engine, FinishReason, GenerationConfig};
use ember_tests::{smollm2_config, spec};

type B = ember_flex::Backend;

fn engine() -> Engine<B> {
    let (device, runtime) = ember_flex::init(&spec("flex", "cpu", DType::F32)).unwrap();
    let capabilities = ember_flex::capabilities(&device);
    Engine::load(&smollm2_config(), &device, runtime, &capabilities).unwrap()
}

fn greedy(prompt: &str, n: usize) -> GenerationConfig {
    GenerationConfig {
        prompt: Some(prompt.into()),
        max_new_tokens: n,
        ..GenerationConfig::default()
    }
}

#[test]
fn engines_are_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Engine<B>>();
    shareable::<Embedder<B>>();
    shareable::<CancelToken>();
}

#[test]
fn eight_threads_share_one_engine() {
    let engine = engine();
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time",
        "The three primary colors are",
    ];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut s = engine.session();
            s.generate(&greedy(p, 12), &CancelToken::new(), &mut |_| {})
                .unwrap()
                .tokens
        })
        .collect();
    let together: Vec<(usize, Vec<u32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let engine = &engine;
                let prompt = prompts[i % prompts.len()];
                scope.spawn(move || {
                    let mut s = engine.session();
                    let stats = s
                        .generate(&greedy(prompt, 12), &CancelToken::new(), &mut |_| {})
                        .unwrap();
                    (i, stats.tokens)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, tokens) in together {
        assert_eq!(tokens, alone[i % prompts.len()], "thread {i}");
    }
}

#[test]
fn cancelling_from_another_thread_stops_and_the_engine_stays_usable() {
    let engine = engine();
    let cancel = CancelToken::new();
    let pieces = AtomicUsize::new(0);
    let stats = std::thread::scope(|scope| {
        let watcher = {
            let cancel = cancel.clone();
            let pieces = &pieces;
            scope.spawn(move || {
                while pieces.load(Ordering::SeqCst) < 3 {
                    std::thread::yield_now();
                }
                cancel.cancel();
            })
        };
        let mut s = engine.session();
        let stats = s
            .generate(&greedy("Once upon a time", 200), &cancel, &mut |_| {
                pieces.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        watcher.join().unwrap();
        stats
    });
    assert_eq!(stats.finish, FinishReason::Cancelled);
    assert!(stats.generated_tokens >= 3 && stats.generated_tokens < 200);
    // The engine serves the next request normally, with the same answer as before.
    let mut s = engine.session();
    let again = s
        .generate(
            &greedy("Once upon a time", 8),
            &CancelToken::new(),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(again.finish, FinishReason::Length);
    assert_eq!(again.tokens[..3], stats.tokens[..3]);
}
