//! libFuzzer target: raw bytes to the real server over TCP
//! (`rtgate::fuzz::FrontDoor`, embedded engine, started once per fuzzing
//! process): `/healthz` and `/readyz` answer 200 after every input.
#![no_main]

use std::sync::OnceLock;

use rtgate::fuzz::FrontDoor;

static DOOR: OnceLock<FrontDoor> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let door = DOOR.get_or_init(|| {
        let mut door = FrontDoor::start("").expect("start the server");
        door.check_ready = true;
        door
    });
    door.feed(data);
});
