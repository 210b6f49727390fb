//! The integration suite: one test binary for every user-level test, so a
//! build links the crate and its dependencies once instead of once per file
//! (two dozen binaries of ~80 MB each filled a CI disk).
//!
//! Run one file's tests with its module path as the filter, e.g.
//! `cargo test --test integration event_store::`.

mod common;

mod admin;
mod analytics;
mod cli_tools;
mod crash;
mod customer_projection;
mod customers;
mod event_store;
mod golden;
mod import;
mod loadgen;
mod log_model;
mod log_open;
mod log_read;
mod loyalty;
mod loyalty_bench;
mod loyalty_crash;
mod loyalty_projection;
mod pipeline;
mod pipeline_projection;
mod projection_crash;
mod segments;
mod segments_projection;
mod tail;
