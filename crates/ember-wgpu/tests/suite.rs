//! The shared model suite on wgpu: on Linux CI, Vulkan through Mesa's lavapipe (a real
//! Vulkan driver on the CPU); f32 and f16 (lavapipe has no bf16).
//!
//! lavapipe is slow (~10 GFLOP/s; a test of the six tiny models takes ~70 s, most of it
//! lavapipe running and compiling kernels) and this suite was CI's longest step (1433 s of a
//! CI run that passed its 5400 s limit on a slow machine; 866 s with the 22 below on
//! 2026-12-02's VM). So each real-model test runs in one dtype here; the tiny models' tests
//! (every architecture variant) in both. f32, with its 1e-4 tolerance, takes Whisper's
//! references; f16, the dtype of the Metal configs, takes the decode paths (KV cache,
//! positions on the device) and the models against `transformers` and sentence-transformers
//! (SmolLM2, Gemma 3, MiniLM). The checks of errors that do not depend on the dtype
//! (malformed checkpoints, a Whisper tokenizer of another model) run in f32 only.
//!
//! [`LEFT_OUT`] names the suite tests that do not run on wgpu, each with its reason: what
//! they would add here is host code, the same on every backend, or kernels that
//! ember-cubecl's tests check on the same lavapipe; all of them run on every CPU backend.
//! (Whisper's long form and multilingual tests return early here and on most backends,
//! saying so: see their own conditions.) `every_suite_test_runs` checks that no other suite
//! test is left out.

use ember::DType;
use ember_tests::{backend_suite, spec, Ctx};

fn ctx(dtype: DType, logits_tol: f32, min_top1: f32) -> Ctx<ember_wgpu::Backend> {
    let init = ember_wgpu::init(&spec(
        "wgpu",
        &std::env::var("EMBER_TEST_WGPU_DEVICE").unwrap_or_else(|_| "auto".into()),
        dtype,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    // lavapipe runs ~10 GFLOP/s: the real models' long prompts run on the CPU backends.
    Ctx::new(init, ember_wgpu::capabilities, logits_tol, min_top1).short_cases()
}

backend_suite!(f32, ember_wgpu::Backend, ctx(DType::F32, 1e-4, 1.0), only [
    tiny_matches_transformers,
    tiny_gguf_equals_hf,
    tiny_gguf_kept_float_equals_dequantized,
    fused_attention_equals_plain,
    prompt_longer_than_context_is_an_error,
    malformed_checkpoints_are_errors,
    whisper_front_end_and_encoder_match_references,
    whisper_streamed_front_end_equals_whole,
    whisper_transcribes_jfk_like_faster_whisper,
    whisper_long_form_matches_faster_whisper,
    whisper_multilingual_matches_faster_whisper,
    whisper_tokenizer_of_another_model_is_an_error,
]);
backend_suite!(f16, ember_wgpu::Backend, ctx(DType::F16, 1e-1, 0.9), only [
    tiny_matches_transformers,
    tiny_gguf_equals_hf,
    tiny_gguf_kept_float_equals_dequantized,
    cached_decode_equals_full_recompute,
    device_position_decode_equals_full_recompute,
    fused_attention_equals_plain,
    prompt_longer_than_context_is_an_error,
    smollm2_matches_transformers,
    gemma3_matches_transformers,
    minilm_matches_sentence_transformers,
]);

/// The suite tests that do not run on wgpu, and why (each runs in f32 on every CPU backend).
const LEFT_OUT: &[(&str, &str)] = &[
    (
        "whisper_tiny_hf_matches_transformers",
        "the Hugging Face loader runs on the host; the model it builds runs the same code as the \
         CTranslate2 checkpoint of whisper_transcribes_jfk_like_faster_whisper",
    ),
    (
        "streamed_text_equals_full_decode",
        "the text pieces are cut on the host from the token ids, which the decode tests here \
         check",
    ),
    (
        "smollm2_kept_quantized_equals_dequantized",
        "the kept-quantized products are ember-cubecl's kernels, which its tests check against \
         the dequantized weights in f32 and f16 on the same lavapipe",
    ),
    (
        "embedding_batch_equals_one_by_one",
        "a batch's padding mask is made on the host and applied by burn's generic ops; \
         minilm_matches_sentence_transformers runs the encoder here",
    ),
];

/// Every test of the shared suite runs here in at least one dtype, or is in [`LEFT_OUT`]
/// (and only existing tests are).
#[test]
fn every_suite_test_runs() {
    let left_out = |name: &&str| LEFT_OUT.iter().any(|(left, _)| left == name);
    let missing: Vec<&str> = ember_tests::SUITE_TESTS
        .iter()
        .filter(|name| !f32::NAMES.contains(name) && !f16::NAMES.contains(name))
        .filter(|name| !left_out(name))
        .copied()
        .collect();
    let unknown: Vec<&str> = LEFT_OUT
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !ember_tests::SUITE_TESTS.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "LEFT_OUT names no suite test: {unknown:?}"
    );
    assert!(
        missing.is_empty(),
        "suite tests run in no dtype: {missing:?}"
    );
}
