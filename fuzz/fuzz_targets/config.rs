//! overcommitd.toml text (and one profiles.d file after a NUL byte): a configuration or a
//! located error, never a panic; every duration an accepted configuration holds is bounded.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use overcommit::config::{Config, MAX_INTERVAL, MAX_TTL};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (main, profile) = text.split_once('\0').unwrap_or((text, ""));
    let profiles = [(
        PathBuf::from("/etc/overcommitd/profiles.d/10.toml"),
        profile.to_string(),
    )];
    match Config::parse(
        Path::new("/etc/overcommitd/overcommitd.toml"),
        main,
        &profiles,
    ) {
        Ok(config) => {
            assert!(config.daemon.default_ttl <= MAX_TTL);
            assert!(config.daemon.client_timeout <= MAX_INTERVAL);
            assert!(config
                .daemon
                .drift_interval
                .is_none_or(|d| d <= MAX_INTERVAL));
            assert!(config.access.iter().all(|r| r.max_ttl <= MAX_TTL));
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
