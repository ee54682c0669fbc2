//! A test that cannot run on this machine (a tool is missing) must never pass silently. With
//! CI=true it fails. Otherwise it says so on the terminal, past libtest's capture, and adds a
//! line to the file $OVERCOMMIT_SKIP_LOG: scripts/test.sh sets it, prints every skip in a
//! summary at the end, and exits non-zero unless OVERCOMMIT_ALLOW_SKIPS=1.

use std::io::Write;

/// Records that the current test did not run, and why (what is missing, how to install it).
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: {test} cannot run, and no suite may skip in CI: {why}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n================================================================\n\
         SKIPPED {test}: {why}\n\
         ================================================================\n"
    );
    if let Some(log) = std::env::var_os("OVERCOMMIT_SKIP_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(file, "{test}: {}", why.replace('\n', " "));
        }
    }
}
