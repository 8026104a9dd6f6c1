#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    anytls_core::fuzz_endpoint::endpoint_at(data, std::time::Instant::now())
});
