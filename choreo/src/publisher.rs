//! Publishing from outside a handler: a web request, a scheduled job, a test.

use std::fmt;
use std::sync::Arc;

use std::time::Instant;

use ::metrics::Histogram;
use tracing::Instrument;
use uuid::Uuid;

use crate::envelope::{Headers, Message, headers as choreo_headers};
use crate::error::PublishError;
use crate::event::Event;
use crate::trace::{self, TraceContext};
use crate::transport::Transport;

/// Publishes events into the choreography from outside a handler.
///
/// Each publish starts a new business flow unless [`PublishOptions::correlation_id`] joins an
/// existing one. Clones share the transport.
///
/// ```
/// # use choreo::{Event, MemoryTransport, Publisher};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// # #[choreo(name = "orders.order-placed", version = 1)]
/// # struct OrderPlaced { order_id: u64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), choreo::PublishError> {
/// let transport = MemoryTransport::builder().unroutable(choreo::Unroutable::Drop).build();
/// let publisher = Publisher::new(transport, "orders-api");
/// let id = publisher.publish(&OrderPlaced { order_id: 7 }).await?;
/// assert_eq!(id.get_version_num(), 7);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher<T> {
    transport: T,
    source: Arc<str>,
    confirm_latency: Histogram,
}

/// Settings for one publish.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Joins an existing business flow instead of starting one.
    pub correlation_id: Option<Uuid>,
    /// Publishes under this id instead of a new one, e.g. when retrying a publish whose
    /// outcome is unknown.
    pub message_id: Option<Uuid>,
    /// Extra headers. A `traceparent` among them is the caller's trace, as with
    /// [`PublishOptions::trace`].
    pub headers: Headers,
    /// The caller's trace, which the message continues; without it the message starts a
    /// trace.
    pub trace: Option<TraceContext>,
}

impl PublishOptions {
    /// Joins the business flow `correlation_id`.
    #[must_use]
    pub fn correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Publishes under `id`.
    #[must_use]
    pub fn message_id(mut self, id: Uuid) -> Self {
        self.message_id = Some(id);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Continues the caller's trace, e.g. the `traceparent` of the HTTP request that
    /// publishes.
    #[must_use]
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }
}

impl<T: Transport> Publisher<T> {
    /// A publisher whose messages come from `source` (a service name).
    pub fn new(transport: T, source: impl Into<Arc<str>>) -> Self {
        let source: Arc<str> = source.into();
        Self {
            transport,
            confirm_latency: crate::metrics::publish_histogram(&source),
            source,
        }
    }

    /// Publishes `event` and resolves once the transport confirmed it; returns its id.
    ///
    /// # Errors
    ///
    /// [`PublishError::Encode`] when the event does not serialize, and
    /// [`PublishError::Transport`] when the transport did not confirm it (including an
    /// unroutable event).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves it unknown whether the event was published; publish it
    /// again with [`PublishOptions::message_id`] set to the same id so consumers deduplicate.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid, PublishError> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// Publishes `event` with `options`.
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    ///
    /// # Cancel safety
    ///
    /// As [`Publisher::publish`].
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Uuid, PublishError> {
        let mut message =
            Message::encode(event, self.source.clone()).map_err(|source| PublishError::Encode {
                event: E::event_type(),
                source,
            })?;
        if let Some(id) = options.message_id {
            message.meta.id = id;
            message.meta.correlation_id = id;
        }
        if let Some(correlation_id) = options.correlation_id {
            message.meta.correlation_id = correlation_id;
        }
        let id = message.meta.id;
        let span = tracing::debug_span!(
            "choreo.publish",
            event = E::NAME,
            version = E::VERSION,
            message_id = %id,
            correlation_id = %message.meta.correlation_id,
        );
        // Continue the caller's trace when the options carry one, else start one.
        let mut headers = options.headers;
        let caller = options.trace.or_else(|| {
            let traceparent = headers.remove(choreo_headers::TRACEPARENT)?;
            TraceContext::parse(&traceparent)
        });
        message.meta.trace = Some(trace::published(&span, caller, &mut headers));
        message.meta.headers = headers;
        let started = Instant::now();
        self.transport.publish(message).instrument(span).await?;
        self.confirm_latency.record(started.elapsed());
        Ok(id)
    }

    /// The transport it publishes on.
    pub fn transport(&self) -> &T {
        &self.transport
    }
}

impl<T> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}
