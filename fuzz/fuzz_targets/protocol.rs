//! A request line as a hostile client sends it: parsed into a request or an error reply,
//! never a panic; a request that parses is written back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overcommit::protocol::{escape, is_clean_text, parse_request, request_line};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(request) => {
            let again =
                parse_request(&request_line(&request)).expect("a request written back parses");
            assert_eq!(again, request);
        }
        Err(reply) => assert!(!reply.ok && reply.error.is_some()),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(is_clean_text(&escape(text), usize::MAX));
    }
});
