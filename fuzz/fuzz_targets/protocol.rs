//! A request line as a hostile client sends it: parsed into a request or an error reply,
//! never a panic; a request that parses is written back the same; the one-pass parse of leases
//! and releases reads every line as the general parse does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overcommit::protocol::{escape, is_clean_text, parse_any_request, parse_request, request_line};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_request(data);
    assert_eq!(
        parsed.as_ref().ok(),
        parse_any_request(data).as_ref().ok(),
        "the one-pass parse disagrees"
    );
    match parsed {
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
