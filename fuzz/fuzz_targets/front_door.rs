//! libFuzzer target: raw bytes to the real server over TCP
//! (`rtgate::fuzz::FrontDoor`, started once per fuzzing process).
#![no_main]

use std::sync::OnceLock;

use rtgate::fuzz::FrontDoor;

static DOOR: OnceLock<FrontDoor> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let door = DOOR.get_or_init(|| FrontDoor::start("").expect("start the server"));
    door.feed(data);
});
