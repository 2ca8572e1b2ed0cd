#![no_main]
//! Fuzz target `manifest`: see `esi_federation_fuzz::manifest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    esi_federation_fuzz::manifest(data);
});
