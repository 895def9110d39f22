//! libFuzzer target: `rtgate::fuzz::last_event_id` (properties in its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtgate::fuzz::last_event_id(data);
});
