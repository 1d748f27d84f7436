//! Cross-crate tests; see `tests/`.
//!
//! The library also compiles and runs the Rust code of the README and of every chapter of
//! the guide in `book/`: each file below is included as a doctest, so
//! `cargo test -p choreo-tests --doc` fails when an example stops compiling or its
//! assertions stop holding.

/// `README.md`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub mod readme {}

/// The guide's chapters, one module each, in the order of `book/src/SUMMARY.md`.
#[cfg(doctest)]
pub mod book {
    /// Introduction.
    #[doc = include_str!("../../book/src/introduction.md")]
    pub mod introduction {}

    /// Getting started.
    #[doc = include_str!("../../book/src/getting-started.md")]
    pub mod getting_started {}

    /// Events.
    #[doc = include_str!("../../book/src/events.md")]
    pub mod events {}

    /// Handlers and services.
    #[doc = include_str!("../../book/src/handlers.md")]
    pub mod handlers {}

    /// Retries, idempotency and poison messages.
    #[doc = include_str!("../../book/src/retries.md")]
    pub mod retries {}

    /// Testing.
    #[doc = include_str!("../../book/src/testing.md")]
    pub mod testing {}

    /// Running on RabbitMQ.
    #[doc = include_str!("../../book/src/rabbitmq.md")]
    pub mod rabbitmq {}

    /// Retries and poison messages on RabbitMQ.
    #[doc = include_str!("../../book/src/rabbitmq-retries.md")]
    pub mod rabbitmq_retries {}

    /// Operations notes.
    #[doc = include_str!("../../book/src/operations.md")]
    pub mod operations {}

    /// Operating choreo.
    #[doc = include_str!("../../book/src/operating.md")]
    pub mod operating {}

    /// Contracts for other teams.
    #[doc = include_str!("../../book/src/contracts.md")]
    pub mod contracts {}

    /// Performance.
    #[doc = include_str!("../../book/src/performance.md")]
    pub mod performance {}
}
