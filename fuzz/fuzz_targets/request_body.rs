#![no_main]
//! Fuzz target `request_body`: see `esi_federation_fuzz::request_body`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    esi_federation_fuzz::request_body(data);
});
