//! The seam between services and brokers.
//!
//! A [`Transport`] moves [`Message`]s: it declares the topology a service needs, publishes
//! with confirmation, and hands each handler queue's deliveries to the service. Everything
//! above it — decoding, idempotency, retry decisions, poison metadata — lives in the service
//! runtime and behaves the same on every transport.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::envelope::{Message, Rfc3339, headers};
use crate::error::TransportError;

/// A message broker, or its in-process stand-in.
///
/// Handles are cheap to clone and share one connection.
pub trait Transport: Clone + Send + Sync + 'static {
    /// The deliveries of one handler queue.
    type Consumer: Consumer;

    /// Declares the exchanges, queues, bindings, retry tiers and poison queues of a service.
    ///
    /// Declaring what already exists, identically, is a no-op.
    ///
    /// # Errors
    ///
    /// When the broker refuses the topology, for example a queue that exists with other
    /// arguments.
    fn declare(
        &self,
        topology: &Topology,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Publishes a message and resolves once the broker has taken responsibility for it.
    ///
    /// # Errors
    ///
    /// [`TransportError::Unroutable`] when no queue is bound to its routing key (and the
    /// transport treats that as an error), or a connection failure.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves leaves it unknown whether the message was
    /// published; publish it again under the same id and let consumers deduplicate.
    fn publish(&self, message: Message) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Publishes several messages and resolves once all are confirmed. Transports override it
    /// to keep every publish in flight at once; the default publishes one after another.
    ///
    /// # Errors
    ///
    /// The first failed publish. Messages before it may have been published.
    ///
    /// # Cancel safety
    ///
    /// As [`Transport::publish`], for every message not yet confirmed.
    fn publish_all(
        &self,
        messages: Vec<Message>,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        async move {
            for message in messages {
                self.publish(message).await?;
            }
            Ok(())
        }
    }

    /// Starts consuming a handler queue declared earlier.
    ///
    /// # Errors
    ///
    /// When the queue does not exist or the broker refuses the consumer.
    fn consume(
        &self,
        queue: &QueueSpec,
    ) -> impl Future<Output = Result<Self::Consumer, TransportError>> + Send;

    /// Whether the transport is connected to its broker right now, for health checks.
    fn is_connected(&self) -> bool {
        true
    }
}

/// The deliveries of one handler queue.
pub trait Consumer: Send + 'static {
    /// One delivered message.
    type Delivery: Delivery;

    /// The next delivery; `None` once the consumer is cancelled or the transport closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call takes no message off the queue.
    fn next(
        &mut self,
    ) -> impl Future<Output = Option<Result<Self::Delivery, TransportError>>> + Send;

    /// Stops taking new deliveries. Deliveries already handed out must still be settled.
    fn cancel(&mut self) -> impl Future<Output = ()> + Send;

    /// Another consumer of the same queue for one more worker, when the transport can hand
    /// out deliveries to several takers at once without them taking turns.
    ///
    /// The default, `None`, makes a handler's workers share this consumer one call to
    /// [`Consumer::next`] at a time.
    fn fork(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// A delivered message that must be settled exactly once.
///
/// Dropping a delivery without settling it returns it to its queue.
pub trait Delivery: Send + Sync + 'static {
    /// The message. `Err` when the transport could not read the envelope; the service then
    /// poisons it with kind [`FailureKind::Malformed`].
    fn message(&self) -> Result<&Message, &str>;

    /// Acknowledges the message: it is done.
    ///
    /// # Errors
    ///
    /// When the acknowledgement could not be sent; the broker will redeliver.
    fn ack(self) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Moves the message to the delayed tier `retry.tier`; once that publish is confirmed,
    /// acknowledges the original.
    ///
    /// # Errors
    ///
    /// When the move was not confirmed; the original stays unacknowledged and is redelivered.
    fn retry(self, retry: Retry) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Moves the message to its poison queue with the failure headers; once that publish is
    /// confirmed, acknowledges the original. Body and headers are kept as they were.
    ///
    /// # Errors
    ///
    /// When the move was not confirmed; the original stays unacknowledged and is redelivered.
    fn poison(self, failure: Failure) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Returns the message to its queue untouched, for another consumer or a later run.
    ///
    /// # Errors
    ///
    /// When the broker could not be told; it redelivers once the channel closes.
    fn requeue(self) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// A move to a delayed retry tier.
#[derive(Clone, Debug)]
pub struct Retry {
    /// The tier, from 0.
    pub tier: usize,
    /// The tier's delay.
    pub delay: Duration,
    /// Handler runs that have failed so far, for the attempt header.
    pub attempt: u32,
    /// Delayed tiers passed once the message is back, for the retry-tier header. One more
    /// than before for a failure; unchanged when the message only waits for a key held by
    /// another run.
    pub tiers_passed: u32,
    /// When the first failure happened.
    pub first_failure: SystemTime,
}

/// What a service asks its transport to declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The service.
    pub service: Arc<str>,
    /// Exchanges the service uses: the domains of the events its handlers consume and emit,
    /// and of those it [publishes](crate::Service::publishes) from outside its handlers.
    pub exchanges: Vec<String>,
    /// One queue per handler.
    pub queues: Vec<QueueSpec>,
}

/// One handler's queue and what feeds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// `<service>.<handler>`.
    pub name: String,
    /// The handler's name.
    pub handler: String,
    /// Exchange and routing key pairs bound to the queue.
    pub bindings: Vec<Binding>,
    /// Delays of the retry tiers, in order.
    pub retry_tiers: Vec<Duration>,
    /// How many deliveries may be in flight at once.
    pub prefetch: u16,
    /// The most times a handler runs for one message, for broker-side delivery limits.
    pub max_attempts: u32,
}

impl QueueSpec {
    /// The name of the poison queue: `<queue>.poison`.
    pub fn poison_queue(&self) -> String {
        format!("{}.poison", self.name)
    }

    /// The name of the retry queue of a delay: `<queue>.retry.<delay>`, e.g. `.retry.10s`.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.name, DelayName(delay))
    }
}

/// A delay as it appears in a queue name: `500ms`, `10s`, `5m`, `2h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayName(pub Duration);

impl fmt::Display for DelayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 3_600_000 == 0 && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 && ms > 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// An exchange and routing key a queue is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Binding {
    /// The exchange: the event's domain.
    pub exchange: String,
    /// `<name>.v<version>`.
    pub routing_key: String,
}

/// Why a message went to a poison queue. Written as the `choreo-failure-kind` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler returned a permanent error.
    Permanent,
    /// Every retry failed; the message says how the last run failed.
    RetriesExhausted,
    /// The body is not JSON or does not match the event.
    Decode,
    /// No handler reads this event name and version.
    UnknownVersion,
    /// The body is over the size limit.
    TooLarge,
    /// The envelope could not be read.
    Malformed,
}

impl FailureKind {
    /// Every kind, in the order the guide lists them.
    pub const ALL: [Self; 6] = [
        Self::Permanent,
        Self::RetriesExhausted,
        Self::Decode,
        Self::UnknownVersion,
        Self::TooLarge,
        Self::Malformed,
    ];

    /// The header value: `permanent`, `retries-exhausted`, `decode`, `unknown-version`,
    /// `too-large` or `malformed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::RetriesExhausted => "retries-exhausted",
            Self::Decode => "decode",
            Self::UnknownVersion => "unknown-version",
            Self::TooLarge => "too-large",
            Self::Malformed => "malformed",
        }
    }

    /// Parses a header value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "permanent" => Self::Permanent,
            "retries-exhausted" => Self::RetriesExhausted,
            "decode" => Self::Decode,
            "unknown-version" => Self::UnknownVersion,
            "too-large" => Self::TooLarge,
            "malformed" => Self::Malformed,
            _ => return None,
        })
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest failure message kept in the headers, in bytes.
pub const MAX_FAILURE_MESSAGE: usize = 1024;

/// Why a handler gave up on a message: becomes the failure headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The handler queue, `<service>.<handler>`.
    pub handler: String,
    /// Why.
    pub kind: FailureKind,
    /// The last error, cut to [`MAX_FAILURE_MESSAGE`] bytes.
    pub message: String,
    /// How many runs of the handler failed (0 when the message never reached it).
    pub attempts: u32,
    /// The first failure.
    pub first_failed_at: SystemTime,
    /// The last failure.
    pub last_failed_at: SystemTime,
    /// The exchange the message was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
}

impl Failure {
    /// Cuts `message` to at most [`MAX_FAILURE_MESSAGE`] bytes on a character boundary.
    pub fn bounded_message(mut message: String) -> String {
        if message.len() > MAX_FAILURE_MESSAGE {
            let mut end = MAX_FAILURE_MESSAGE - '…'.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        message
    }

    /// The failure headers, names from [`headers::failure`].
    pub fn headers(&self) -> [(&'static str, String); 8] {
        use headers::failure as h;
        [
            (h::HANDLER, self.handler.clone()),
            (h::KIND, self.kind.as_str().to_owned()),
            (h::MESSAGE, self.message.clone()),
            (h::ATTEMPTS, self.attempts.to_string()),
            (h::FIRST_AT, Rfc3339(self.first_failed_at).to_string()),
            (h::LAST_AT, Rfc3339(self.last_failed_at).to_string()),
            (h::EXCHANGE, self.exchange.clone()),
            (h::ROUTING_KEY, self.routing_key.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_names() {
        assert_eq!(DelayName(Duration::from_secs(1)).to_string(), "1s");
        assert_eq!(DelayName(Duration::from_secs(60)).to_string(), "1m");
        assert_eq!(DelayName(Duration::from_secs(90)).to_string(), "90s");
        assert_eq!(DelayName(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(DelayName(Duration::from_secs(7200)).to_string(), "2h");
    }

    #[test]
    fn failure_message_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let cut = Failure::bounded_message(long);
        assert!(cut.len() <= MAX_FAILURE_MESSAGE);
        assert!(cut.ends_with('…'));
        assert_eq!(Failure::bounded_message("short".into()), "short");
    }

    #[test]
    fn failure_kinds_round_trip() {
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
    }
}
