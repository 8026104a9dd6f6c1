#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anytls_core::fuzzing::uot(data));
