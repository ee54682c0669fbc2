//! Links libgcc's unwinder statically (libgcc_eh) rather than loading libgcc_s.so.1 at every
//! start. Loading it costs a dozen system calls, and its constructor probes the CPU with
//! CPUID, which traps to the hypervisor on a virtual machine: together about a tenth of the
//! wall time of an `overcommitctl status` there (docs/performance.md). Rust's musl and
//! static-glibc targets link the same unwinder statically.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=gcc_eh");
    }
}
