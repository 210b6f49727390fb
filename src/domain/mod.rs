//! The CRM domain: plain Rust types and pure functions, no I/O, no proto, no clock.
//!
//! [`events`] holds every typed event (one file each), their validation rules and the
//! versioned encoding the log stores.

pub mod clv;
pub mod common;
pub mod customer;
pub mod events;
pub mod kpis;
pub mod loyalty;
pub mod personal;
pub mod pipeline;
pub mod profile;
pub mod rfm;
pub mod segment;
pub mod violations;

pub use events::{DecodeError, DomainEvent, TypedEvent};
pub use violations::{FieldViolation, Violations};
