#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    anytls_core::fuzzing::client_session(data, std::time::Instant::now())
});
