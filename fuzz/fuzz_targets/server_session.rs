#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    anytls_core::fuzzing::server_session(data, std::time::Instant::now())
});
