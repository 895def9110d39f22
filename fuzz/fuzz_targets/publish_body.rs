//! libFuzzer target: `rtgate::fuzz::publish_body` (properties in its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtgate::fuzz::publish_body(data);
});
