//! The sampler over SmolLM2's 49,152-token and Gemma 3's 262,144-token vocabularies: greedy,
//! temperature alone (every token a candidate), top-k, top-p, and a chat-style chain.
//! `cargo bench -p ember-benches --bench sampler`.

use divan::Bencher;
use ember::sampling::Sampler;
use ember::GenerationConfig;

const VOCABS: &[usize] = &[49_152, 262_144];

fn main() {
    divan::main();
}

fn run(bencher: Bencher<'_, '_>, vocab: usize, set: fn(&mut GenerationConfig)) {
    let mut config = GenerationConfig {
        temperature: 0.8,
        ..GenerationConfig::default()
    };
    set(&mut config);
    let mut sampler = Sampler::new(&config);
    let logits = ember_benches::logits(vocab, 1);
    bencher
        .with_inputs(|| logits.clone())
        .bench_local_refs(|l| sampler.sample(l, &[]));
}

#[divan::bench(args = VOCABS)]
fn greedy(bencher: Bencher<'_, '_>, vocab: usize) {
    run(bencher, vocab, |c| c.temperature = 0.0);
}

#[divan::bench(args = VOCABS)]
fn temperature(bencher: Bencher<'_, '_>, vocab: usize) {
    run(bencher, vocab, |_| {});
}

#[divan::bench(args = VOCABS)]
fn top_k_40(bencher: Bencher<'_, '_>, vocab: usize) {
    run(bencher, vocab, |c| c.top_k = 40);
}

#[divan::bench(args = VOCABS)]
fn top_p_0_9(bencher: Bencher<'_, '_>, vocab: usize) {
    run(bencher, vocab, |c| c.top_p = 0.9);
}

/// `configs/cpu-f32-sampled.toml`'s chain: temperature 0.7, top-k 40, top-p 0.95, min-p 0.05.
#[divan::bench(args = VOCABS)]
fn chat_chain(bencher: Bencher<'_, '_>, vocab: usize) {
    run(bencher, vocab, |c| {
        (c.temperature, c.top_k, c.top_p, c.min_p) = (0.7, 40, 0.95, 0.05)
    });
}
