//! The supervisor of a city node: config, wiring, the sampling loop, the
//! metrics exposition and the local control socket. The binary in
//! `main.rs` only parses arguments and maps errors to exit codes.

pub mod backend;
pub mod bbb;
pub mod certs;
pub mod config;
pub mod console;
pub mod control;
pub mod enrollment;
pub mod firstboot;
pub mod gateway;
pub mod installer;
pub mod logging;
pub mod members;
pub mod metrics;
pub mod os_update;
pub mod outbox;
pub mod reports;
pub mod run;
pub mod ssh;
pub mod state;
pub mod update;
