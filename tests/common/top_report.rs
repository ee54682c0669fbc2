//! Reading `overcommitctl top --json` reports, for tests/cli_top.rs and the VM suite
//! (tests/vm/top.rs, which includes this file by path).
#![allow(dead_code)]

use serde_json::Value;

/// The `not_processes` row of this `kind`.
pub fn not_process<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["not_processes"]
        .as_array()
        .expect("not_processes")
        .iter()
        .find(|r| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} row in {report:#}"))
}

/// The holder row of process `pid`, if it is listed.
pub fn holder(report: &Value, pid: i64) -> Option<&Value> {
    report["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .find(|h| h["pid"] == pid)
}

/// The holder row of process `pid`; panics when it is not listed.
pub fn row(report: &Value, pid: i64) -> &Value {
    holder(report, pid).unwrap_or_else(|| panic!("no row for pid {pid} in {report:#}"))
}

/// The signed integer `key` of `value`.
pub fn bytes(value: &Value, key: &str) -> i64 {
    value[key]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer {key} in {value}"))
}

/// Every row's `charged_bytes` (holders and not_processes) added up: Committed_AS, exactly.
pub fn rows_sum(report: &Value) -> i64 {
    report["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .chain(report["not_processes"].as_array().expect("not_processes"))
        .map(|r| bytes(r, "charged_bytes"))
        .sum()
}

/// Asserts that row `a` is charged `extra` bytes more than row `b`, within `slack` (two
/// processes of the same program differ by a page of stack when their arguments do).
pub fn assert_charged_more(a: &Value, b: &Value, extra: i64, slack: i64) {
    let difference = bytes(a, "charged_bytes") - bytes(b, "charged_bytes");
    assert!(
        (difference - extra).abs() <= slack,
        "charged {difference} bytes more, expected {extra} (± {slack}):\n{a}\n{b}"
    );
}
