//! The tonic edge: proto ⇄ domain conversion ([`convert`]; stored custom data straight to
//! protobuf in [`custom_data`]), the `EventStore` service
//! ([`event_store`]; mounted as [`encoded::EventStoreEdge`], whose read RPCs answer with
//! `RecordedEvent` bytes written straight from the stored events by [`wire`]), the `Admin` service over the projections ([`admin`]), the wait budget
//! of read-your-writes reads ([`deadline`]), the one
//! error → status table ([`status`]) and server assembly with
//! health, reflection and limits ([`server`]). Proto types never leave this module.

pub mod admin;
pub mod analytics;
pub mod append_wire;
pub mod convert;
pub mod convert_loyalty;
pub mod convert_pipeline;
pub mod custom_data;
pub mod customers;
pub mod deadline;
pub mod encoded;
pub mod event_store;
pub mod loyalty;
pub mod pb;
pub mod pipeline;
pub mod server;
pub mod status;
pub mod wire;

pub use server::{RunningServer, ServeError, ServerConfig, serve_log, start, start_with};
