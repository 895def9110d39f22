//! libFuzzer target: `rtgate::fuzz::cursor` (properties in its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtgate::fuzz::cursor(data);
});
