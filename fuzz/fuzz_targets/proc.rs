//! The /proc parsers: meminfo, swaps, a vm knob and the kernel release, from arbitrary text
//! (a wrong --proc-root, a strange kernel): values or errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overcommit::kernel::{parse_meminfo, parse_swaps, parse_unsigned};
use overcommit::model::KernelVersion;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(memory) = parse_meminfo(&text) {
        assert!(memory.file_pages >= memory.shmem.min(memory.file_pages));
    }
    if let Ok(swaps) = parse_swaps(&text) {
        assert!(swaps
            .iter()
            .all(|s| s.size_bytes % 1024 == 0 || s.size_bytes == u64::MAX));
    }
    let _ = parse_unsigned(&text);
    let _ = KernelVersion::parse(&text);
});
