#![no_main]
//! Fuzz target `token`: see `esi_federation_fuzz::token`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    esi_federation_fuzz::token(data);
});
