//! Testing services in-process.
//!
//! [`TestHarness`] runs services on a [`MemoryTransport`] with a manual clock, publishes into
//! them, waits until the system is quiet, and answers what was published, handled and
//! poisoned. Delayed retries fall due when the harness moves the clock, so a test of a
//! one-minute retry tier takes milliseconds.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::envelope::Message;
use crate::error::{PublishError, Result};
use crate::event::Event;
use crate::idempotency::IdempotencyStore;
use crate::memory::{MemoryTransport, PoisonedMessage, QueueStats, Unroutable};
use crate::observe::{Observation, Outcome};
use crate::publisher::{PublishOptions, Publisher};
use crate::service::{RunningService, Service};
use crate::transport::FailureKind;

/// Runs services in-process for a test.
///
/// The transport records every published message, drops (but records) events no started
/// service consumes, and runs delayed retries on a manual clock.
pub struct TestHarness {
    transport: MemoryTransport,
    publisher: Publisher<MemoryTransport>,
    running: Vec<RunningService>,
    records: Arc<Mutex<Vec<Record>>>,
    timeout: Duration,
}

/// One outcome the harness saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The handler queue, `<service>.<handler>`.
    pub queue: String,
    /// The message id, when the envelope could be read.
    pub message_id: Option<Uuid>,
    /// The event name.
    pub event: String,
    /// The correlation id.
    pub correlation_id: Option<Uuid>,
    /// What happened.
    pub outcome: RecordedOutcome,
}

/// What happened to a message, as recorded by the harness.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordedOutcome {
    /// Handled and acknowledged; the ids of the events it published.
    Handled {
        /// Ids of the follow-up events.
        published: Vec<Uuid>,
    },
    /// Skipped as a duplicate.
    Duplicate,
    /// A failed run that will be retried.
    Retrying {
        /// Failed runs so far.
        attempt: u32,
        /// The delayed tier, `None` for an immediate retry.
        tier: Option<usize>,
        /// The error.
        error: String,
    },
    /// Waiting for a key held by another run.
    Deferred,
    /// Moved to the poison queue.
    Poisoned {
        /// Why.
        kind: FailureKind,
        /// The error.
        error: String,
    },
    /// The broker could not be told.
    SettleFailed,
}

/// The system did not become quiet in time.
#[derive(Debug, thiserror::Error)]
#[error("not quiet after {waited:?}: {busy}")]
pub struct SettleTimeout {
    waited: Duration,
    busy: String,
}

impl Default for TestHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHarness {
    /// A harness with no services yet.
    pub fn new() -> Self {
        let transport = MemoryTransport::builder()
            .record(true)
            .manual_clock(true)
            .unroutable(Unroutable::Drop)
            .build();
        Self {
            publisher: Publisher::new(transport.clone(), "test"),
            transport,
            running: Vec::new(),
            records: Arc::default(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Sets how long [`TestHarness::settle`] waits in real time (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The transport the services run on.
    pub fn transport(&self) -> &MemoryTransport {
        &self.transport
    }

    /// Starts `service` on the harness's transport, recording its outcomes.
    ///
    /// # Errors
    ///
    /// As [`Service::start`].
    pub async fn start<S: IdempotencyStore>(&mut self, service: Service<S>) -> Result<()> {
        let records = Arc::clone(&self.records);
        let service = service.observe(move |o: &Observation<'_>| {
            let record = Record::from(o);
            records
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record);
        });
        let running = service.start(&self.transport).await?;
        self.running.push(running);
        Ok(())
    }

    /// Publishes `event` as a new business flow; returns its message id.
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid, PublishError> {
        self.publisher.publish(event).await
    }

    /// Publishes `event` with `options`, e.g. a fixed message id to simulate a redelivery.
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Uuid, PublishError> {
        self.publisher.publish_with(event, options).await
    }

    /// Waits until every message is handled or poisoned, moving the clock forward whenever
    /// only delayed retries are left.
    ///
    /// # Errors
    ///
    /// [`SettleTimeout`] when the system is still busy after the harness's timeout, in real
    /// time.
    pub async fn settle(&self) -> Result<(), SettleTimeout> {
        self.wait(true).await
    }

    /// Waits until every message is handled, poisoned or waiting in a delayed tier, without
    /// moving the clock.
    ///
    /// # Errors
    ///
    /// [`SettleTimeout`] as for [`TestHarness::settle`].
    pub async fn drain(&self) -> Result<(), SettleTimeout> {
        self.wait(false).await
    }

    async fn wait(&self, advance: bool) -> Result<(), SettleTimeout> {
        let started = Instant::now();
        loop {
            if self.transport.is_idle() {
                return Ok(());
            }
            if self.transport.only_retries_waiting() {
                if !advance {
                    return Ok(());
                }
                if let Some(next) = self.transport.next_retry_in() {
                    self.transport.advance(next);
                    continue;
                }
            }
            if started.elapsed() > self.timeout {
                return Err(SettleTimeout {
                    waited: started.elapsed(),
                    busy: self.transport.busy(),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Moves the clock forward by `by`, releasing delayed retries that fall due.
    pub fn advance(&self, by: Duration) {
        self.transport.advance(by);
    }

    /// Every outcome so far, in order.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self, queue: &str, matches: impl Fn(&RecordedOutcome) -> bool) -> usize {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| r.queue == queue && matches(&r.outcome))
            .count()
    }

    /// How many messages `queue`'s handler handled successfully.
    pub fn handled(&self, queue: &str) -> usize {
        self.count(queue, |o| matches!(o, RecordedOutcome::Handled { .. }))
    }

    /// How many duplicates `queue`'s handler skipped.
    pub fn duplicates(&self, queue: &str) -> usize {
        self.count(queue, |o| matches!(o, RecordedOutcome::Duplicate))
    }

    /// How many failed runs of `queue`'s handler were retried.
    pub fn retries(&self, queue: &str) -> usize {
        self.count(queue, |o| matches!(o, RecordedOutcome::Retrying { .. }))
    }

    /// The messages in `queue`'s poison queue (empty for an unknown queue).
    pub fn poisoned(&self, queue: &str) -> Vec<PoisonedMessage> {
        self.transport.poisoned(queue).unwrap_or_default()
    }

    /// What `queue` holds now.
    pub fn stats(&self, queue: &str) -> Option<QueueStats> {
        self.transport.stats(queue).ok()
    }

    /// Every published message, in order.
    pub fn published_messages(&self) -> Vec<Message> {
        self.transport.published()
    }

    /// Every published event of type `E`, decoded, in order.
    pub fn published<E: Event>(&self) -> Vec<E> {
        self.transport
            .published()
            .into_iter()
            .filter(|m| m.meta.name == E::NAME && m.meta.version == E::VERSION)
            .filter_map(|m| serde_json::from_slice(&m.body).ok())
            .collect()
    }

    /// Stops every service gracefully.
    ///
    /// # Errors
    ///
    /// The first error of [`RunningService::shutdown`].
    pub async fn shutdown(self) -> Result<()> {
        let mut first_error = Ok(());
        for running in self.running {
            let result = running.shutdown().await;
            if first_error.is_ok() {
                first_error = result;
            }
        }
        first_error
    }
}

impl fmt::Debug for TestHarness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHarness")
            .field("transport", &self.transport)
            .field("services", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl From<&Observation<'_>> for Record {
    fn from(o: &Observation<'_>) -> Self {
        let outcome = match &o.outcome {
            Outcome::Handled { published } => RecordedOutcome::Handled {
                published: published.iter().map(|m| m.meta.id).collect(),
            },
            Outcome::Duplicate => RecordedOutcome::Duplicate,
            Outcome::Retrying {
                attempt,
                error,
                tier,
                ..
            } => RecordedOutcome::Retrying {
                attempt: *attempt,
                tier: *tier,
                error: (*error).to_owned(),
            },
            Outcome::Deferred { .. } => RecordedOutcome::Deferred,
            Outcome::Poisoned(failure) => RecordedOutcome::Poisoned {
                kind: failure.kind,
                error: failure.message.clone(),
            },
            Outcome::SettleFailed { .. } => RecordedOutcome::SettleFailed,
        };
        Self {
            queue: o.queue.to_owned(),
            message_id: o.meta.map(|m| m.id),
            event: o.meta.map(|m| m.name.to_string()).unwrap_or_default(),
            correlation_id: o.meta.map(|m| m.correlation_id),
            outcome,
        }
    }
}
