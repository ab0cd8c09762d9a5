//! Decoding and validating a DigitalOcean droplet list (API output) never
//! panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = promguard_cloud::digitalocean::fuzz_decode_droplets_page(data);
});
