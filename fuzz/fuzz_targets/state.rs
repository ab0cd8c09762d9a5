//! The state file reader never panics, and what it accepts survives a
//! save and load unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("promguard.state.json");
    if let Ok(state) = promguard_core::State::from_json(path, data) {
        let again = promguard_core::State::from_json(path, state.to_json().as_bytes())
            .expect("a saved state loads again");
        assert_eq!(state, again);
    }
});
