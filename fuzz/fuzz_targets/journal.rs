//! The daemon's journal as found on disk after a crash or tampering: a state or an error,
//! never a panic; a state that parses is saved and read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overcommit::journal::parse_state;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = parse_state(data) {
        let bytes = serde_json::to_vec(&state).expect("a parsed state serializes");
        assert_eq!(parse_state(&bytes).expect("and parses again"), state);
    }
});
