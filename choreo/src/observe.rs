//! Watching what a service does with each message.

use std::time::Duration;

use crate::envelope::{Message, Metadata};
use crate::transport::Failure;

/// Receives one [`Observation`] for every outcome of a handler.
///
/// Register observers with [`Service::observe`](crate::Service::observe): a timeline for a
/// demo, metrics, assertions in tests. Calls happen on the handling task, so keep them short.
/// An observer hears of an outcome just before the message is settled with the broker; if
/// settling then fails, an [`Outcome::SettleFailed`] follows and the broker redelivers.
pub trait Observer: Send + Sync + 'static {
    /// Called once per outcome.
    fn observe(&self, observation: &Observation<'_>);
}

impl<F: Fn(&Observation<'_>) + Send + Sync + 'static> Observer for F {
    fn observe(&self, observation: &Observation<'_>) {
        self(observation);
    }
}

/// What happened to one message in one handler.
#[derive(Debug)]
#[non_exhaustive]
pub struct Observation<'a> {
    /// The service.
    pub service: &'a str,
    /// The handler's queue, `<service>.<handler>`.
    pub queue: &'a str,
    /// The message's metadata, when its envelope could be read.
    pub meta: Option<&'a Metadata>,
    /// What happened.
    pub outcome: Outcome<'a>,
    /// Time spent on the message in this delivery.
    pub elapsed: Duration,
}

/// What happened to a message.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// The handler succeeded and its events were confirmed; the message is acknowledged.
    Handled {
        /// The follow-up events it published.
        published: &'a [Message],
    },
    /// The key was already handled: acknowledged without running the handler.
    Duplicate,
    /// A run failed and the message will run again: at once (`tier` is `None`) or from the
    /// delayed tier `tier` after `delay`.
    Retrying {
        /// Failed runs so far.
        attempt: u32,
        /// The error.
        error: &'a str,
        /// The delayed tier, `None` for an immediate retry.
        tier: Option<usize>,
        /// How long until the next run.
        delay: Duration,
    },
    /// Another run holds the message's key; the message was moved to wait.
    Deferred {
        /// How long until it is tried again.
        delay: Duration,
    },
    /// The message is moved to the poison queue.
    Poisoned(&'a Failure),
    /// Settling the message with the broker failed; the broker will redeliver it.
    SettleFailed {
        /// What failed.
        error: &'a str,
    },
}
