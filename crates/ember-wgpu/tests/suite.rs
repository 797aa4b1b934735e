//! The shared model suite on wgpu: on Linux CI, Vulkan through Mesa's lavapipe (a real
//! Vulkan driver on the CPU); f32 and f16 (lavapipe has no bf16).
//!
//! lavapipe is slow (~10 GFLOP/s) and this suite was CI's longest step, so each real model's
//! tests run in one dtype here, and the tiny models' (which pay mostly for compiling
//! shaders) in both. f32, with its 1e-4 tolerance, takes the checks of exact equality
//! (kept-quantized weights, batched embeddings) and Whisper's references; f16, the dtype of
//! the Metal configs, takes Gemma 3 and MiniLM; SmolLM2 against `transformers` runs in both.
//! The checks of errors that do not depend on the dtype (malformed checkpoints, a Whisper
//! tokenizer of another model) run in f32 only.
//! The same real-model tests run in f32 on every CPU backend, and each CubeCL kernel in both
//! dtypes in ember-cubecl's equivalence tests. `every_suite_test_runs` checks that no suite
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
    cached_decode_equals_full_recompute,
    device_position_decode_equals_full_recompute,
    fused_attention_equals_plain,
    streamed_text_equals_full_decode,
    prompt_longer_than_context_is_an_error,
    malformed_checkpoints_are_errors,
    smollm2_matches_transformers,
    smollm2_kept_quantized_equals_dequantized,
    embedding_batch_equals_one_by_one,
    whisper_front_end_and_encoder_match_references,
    whisper_streamed_front_end_equals_whole,
    whisper_transcribes_jfk_like_faster_whisper,
    whisper_long_form_matches_faster_whisper,
    whisper_tiny_hf_matches_transformers,
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
    streamed_text_equals_full_decode,
    prompt_longer_than_context_is_an_error,
    smollm2_matches_transformers,
    gemma3_matches_transformers,
    minilm_matches_sentence_transformers,
]);

/// Every test of the shared suite runs here in at least one dtype.
#[test]
fn every_suite_test_runs() {
    let missing: Vec<&str> = ember_tests::SUITE_TESTS
        .iter()
        .filter(|name| !f32::NAMES.contains(name) && !f16::NAMES.contains(name))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "suite tests run in no dtype: {missing:?}"
    );
}
