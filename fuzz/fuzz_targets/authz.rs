#![no_main]
//! Fuzz target `authz`: see `esi_federation_fuzz::authz`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    esi_federation_fuzz::authz(data);
});
