//! overcommit: inspect, predict, validate and lease Linux's memory-overcommit policy.
//!
//! The pure policy model ([`model`], [`predict`], [`findings`]) knows nothing of files or
//! sockets; [`kernel`] is the one module that touches kernel files; the binaries are thin.

pub mod cli;
pub mod ctl;
pub mod dtype;
pub mod findings;
pub mod kernel;
pub mod model;
pub mod output;
pub mod predict;
pub mod size;
pub mod sysctl_d;
