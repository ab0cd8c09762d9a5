//! The `wg show <if> dump` parser (remote output) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = promguard_wg::parse_dump(text);
    }
});
