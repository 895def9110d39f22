//! libFuzzer target: `rtgate::fuzz::message_id` (properties in its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtgate::fuzz::message_id(data);
});
