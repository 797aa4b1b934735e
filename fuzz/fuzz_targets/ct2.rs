#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ember_fuzz::ct2(data);
});
