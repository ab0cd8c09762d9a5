//! The Prometheus targets API decoder (remote output) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = promguard_remote::prometheus_api::parse_targets(data);
});
