#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ember_fuzz::tolerate_caught_tokenizers_panics();
    ember_fuzz::gguf(data);
});
