//! libFuzzer target: `rtgate::fuzz::ws_frame` (properties in its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtgate::fuzz::ws_frame(data);
});
