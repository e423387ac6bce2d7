#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pocketvlm_fuzz::checkpoint::run(data));
