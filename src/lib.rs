//! rapport: an event-sourced CRM backend. Every customer interaction is an immutable
//! event in an embedded, hash-chained log on sled; a tonic gRPC server serves the log.
//!
//! # Layout
//! - [`limits`]: every bound of the system, with its unit and reason.
//! - [`clock`]: the injected clock; only the edge and the log's writer read it.
//! - [`log`]: the event log on sled: group-commit writer, chunked storage, hash chain,
//!   reads, offline verify. Knows nothing of the CRM.
//! - [`keys`]: per-customer data keys under a master key, sealing of personal fields,
//!   lookup tokens, and erasure by deleting the key (crypto-shredding). Not in sled.
//! - [`domain`]: CRM event types, their rules and versioned encoding. Pure: no I/O, no
//!   proto, no clock.
//! - [`projections`]: the projection engine: deterministic folds of the log into their
//!   own sled trees, checkpointed atomically with their state, followed live, rebuilt
//!   into a shadow generation without downtime; and the built-in `log_stats`.
//! - [`segment_job`]: keeps segment membership current as events and time arrive, by
//!   appending entered / left events (the time is in the events, never read by a fold).
//! - [`loyalty_job`]: the loyalty earning policy following the log (exactly-once awards
//!   with derived ids) and the time tick (expiry, tiers) (issue 5).
//! - [`grpc`]: the tonic edge: proto ⇄ domain conversion, the `EventStore` service, the
//!   one error → status table, server assembly with health and reflection.
//! - Sales pipelines (issue 4): [`domain::pipeline`] (accounts, pipelines, leads, deals,
//!   tasks: states and pure decisions), [`projections::pipeline`] (the one fold, the
//!   projection and the as-of replay), [`projections::pipeline_queries`] (board,
//!   forecast, metrics, lists over a model) and [`grpc::pipeline`] (the `Pipeline`
//!   service).
//! - [`cli`]: the commands of the `rapport` binary (serve, verify, tail, bench).
//! - [`loadgen`]: the load generator behind `rapport bench` (`loadgen/h2_client`: its
//!   lean gRPC client over bare HTTP/2 streams).
//! - [`seed`]: `rapport seed`, a deterministic retail history for tests, benches and demos;
//!   [`seed_sales`] adds accounts, leads, deals and tasks to it.
//! - [`replay`]: `rapport replay`, the log as JSON lines, offline or through a server.
//! - [`import`]: `rapport import`, bulk import of purchases, customers and typed events
//!   from CSV / JSON lines, offline or through a server; idempotent.

#![warn(missing_docs)]

pub mod cli;
pub mod clock;
pub mod domain;
pub mod grpc;
pub mod import;
pub mod keys;
pub mod limits;
pub mod loadgen;
pub mod log;
pub mod loyalty_job;
pub mod privacy;
pub mod projections;
pub mod replay;
pub mod seed;
pub mod seed_sales;
pub mod segment_job;
