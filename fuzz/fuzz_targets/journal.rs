//! The daemon's journal as found on disk after a crash or tampering: the snapshot parser and
//! the log's replay give a state or an error, never a panic. A snapshot that parses is saved
//! and read back the same. A log is read only as far as its whole, good records go: those,
//! encoded again, replay to the same state, and cut anywhere they replay to the state of the
//! records before the cut (a torn record is never read as a change).
#![no_main]

use libfuzzer_sys::fuzz_target;
use overcommit::journal::{decode, encode_record, parse_state, replay, State, JOURNAL_VERSION};
use overcommit::model::{Limit, Mode, Policy};

fn base() -> State {
    State {
        version: JOURNAL_VERSION,
        generation: 1,
        boot_id: "b".into(),
        admin_baseline: None,
        leases: vec![],
        effective: Policy {
            mode: Mode::Heuristic,
            limit: Limit::Ratio(50),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = parse_state(data) {
        let bytes = serde_json::to_vec(&state).expect("a parsed state serializes");
        assert_eq!(parse_state(&bytes).expect("and parses again"), state);
    }

    let mut state = base();
    let replayed = replay(&mut state, data);
    assert!(replayed.valid <= data.len());
    assert_eq!(replayed.ignored.is_some(), replayed.valid < data.len());

    // The records the replay went over, encoded again.
    let mut again = Vec::new();
    let mut ends = Vec::new();
    let mut at = 0;
    while at < replayed.valid {
        let record = decode(&data[at..]).expect("a record the replay read decodes");
        again.extend(encode_record(record.generation, record.seq, &record.change));
        ends.push(again.len());
        at += record.length;
    }
    assert_eq!(at, replayed.valid);
    let mut from_again = base();
    assert_eq!(replay(&mut from_again, &again).applied, replayed.applied);
    assert_eq!(from_again, state);

    // Cut where the input's length says: only the records before the cut count.
    if !again.is_empty() {
        let cut = data.len() % (again.len() + 1);
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        let mut cut_state = base();
        let cut_replay = replay(&mut cut_state, &again[..cut]);
        assert!(cut_replay.valid <= cut);
        let mut prefix_state = base();
        let end = if whole == 0 { 0 } else { ends[whole - 1] };
        replay(&mut prefix_state, &again[..end]);
        assert_eq!(cut_state, prefix_state);
    }
});
