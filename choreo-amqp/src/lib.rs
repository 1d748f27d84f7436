//! RabbitMQ transport for [`choreo`].
//!
//! Services written against `choreo` run on RabbitMQ unchanged: give
//! [`Service::start`](choreo::Service::start) an [`AmqpTransport`] instead of the in-memory
//! one. The transport declares the topology of DESIGN §7 (a topic exchange per domain, a
//! quorum queue per handler with retry tiers and a poison queue), publishes with confirms,
//! consumes with per-consumer prefetch and manual acknowledgements, and replaces broken
//! connections on its own.
//!
//! ```no_run
//! use choreo_amqp::{AmqpConfig, AmqpTransport};
//!
//! # async fn run() -> Result<(), choreo_amqp::AmqpError> {
//! // CHOREO_AMQP_URL, or amqp://guest:guest@127.0.0.1:5672/%2f
//! let transport = AmqpTransport::connect(AmqpConfig::from_env()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `tls`: `amqps://` URLs through rustls, verifying the broker's certificate against the
//!   system's roots.

mod acks;
mod config;
mod connection;
mod consumer;
mod error;
mod management;
pub mod poison;
mod publisher;
mod topology;
mod transport;
mod wire;

pub use config::{AmqpConfig, DEFAULT_URL, MANAGEMENT_URL_ENV, QueueType, URL_ENV};
pub use consumer::{AmqpConsumer, AmqpDelivery};
pub use error::AmqpError;
pub use transport::AmqpTransport;
pub use wire::envelope_properties;
