//! overcommit: inspect, predict, validate and lease Linux's memory-overcommit policy.
//!
//! The pure policy model ([`model`], [`predict`], [`findings`]) knows nothing of files or
//! sockets; [`kernel`] is the one module that touches kernel files; the binaries are thin.

pub mod auth;
pub mod change;
pub mod charge;
pub mod cli;
pub mod client;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dtype;
pub mod findings;
pub mod journal;
pub mod kernel;
pub mod lease;
pub mod logging;
pub mod malloc;
pub mod model;
pub mod output;
pub mod predict;
pub mod process_scan;
pub mod program;
pub mod protocol;
pub mod size;
pub mod slurm;
pub mod smaps;
pub mod sysctl_d;
