//! The handler's view of the message it is handling.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use uuid::Uuid;

use crate::envelope::{Headers, Message, Metadata, derived_id, encode_body};
use crate::error::PublishError;
use crate::event::{Event, EventType};
use crate::trace::{self, TraceContext};

/// Envelope metadata of the message being handled, and the way to publish follow-up events.
///
/// Follow-up events inherit the correlation id and take the incoming message's id as their
/// causation id. They are published when the handler returns `Ok`, and the incoming message
/// is acknowledged only once the broker has confirmed all of them; a failed run publishes
/// nothing.
#[derive(Clone)]
pub struct Context {
    scope: Arc<Scope>,
}

/// The handler a context belongs to: fixed for the life of a service.
#[derive(Debug)]
pub(crate) struct HandlerScope {
    pub(crate) service: Arc<str>,
    pub(crate) queue: String,
    pub(crate) handler: &'static str,
    pub(crate) emits: &'static [EventType],
}

struct Scope {
    meta: Metadata,
    /// Parsed on first use: most handlers never ask.
    trace: std::sync::OnceLock<TraceContext>,
    attempt: u32,
    handler: Arc<HandlerScope>,
    outbox: Mutex<Outbox>,
}

#[derive(Default)]
pub(crate) struct Outbox {
    closed: bool,
    pub(crate) messages: Vec<Message>,
    pub(crate) undeclared: Option<PublishError>,
}

impl Context {
    pub(crate) fn new(meta: Metadata, attempt: u32, handler: Arc<HandlerScope>) -> Self {
        Self {
            scope: Arc::new(Scope {
                meta,
                trace: std::sync::OnceLock::new(),
                attempt,
                handler,
                outbox: Mutex::new(Outbox::default()),
            }),
        }
    }

    /// Closes the context and takes what the handler published.
    pub(crate) fn finish(&self) -> Outbox {
        let mut outbox = self
            .scope
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        outbox.closed = true;
        std::mem::take(&mut *outbox)
    }

    /// All envelope metadata of the incoming message.
    pub fn meta(&self) -> &Metadata {
        &self.scope.meta
    }

    /// The incoming message's id.
    pub fn message_id(&self) -> Uuid {
        self.scope.meta.id
    }

    /// The business flow the message belongs to.
    pub fn correlation_id(&self) -> Uuid {
        self.scope.meta.correlation_id
    }

    /// The message whose handling published the incoming one, if any.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.scope.meta.causation_id
    }

    /// The business key of the incoming message, if its event declares one.
    pub fn key(&self) -> Option<&str> {
        self.scope.meta.key.as_deref()
    }

    /// The trace context of this run: the incoming message's trace, in a span of its own.
    /// Events the handler publishes continue this trace.
    ///
    /// With the `opentelemetry` feature and a `tracing-opentelemetry` layer, it is the current
    /// span: the run's `choreo.handle` span, or a span the handler entered in it.
    pub fn trace(&self) -> TraceContext {
        trace::current_span().unwrap_or_else(|| self.own_trace())
    }

    fn own_trace(&self) -> TraceContext {
        *self.scope.trace.get_or_init(|| {
            self.scope
                .meta
                .trace
                .map_or_else(TraceContext::root, |parent| parent.child())
        })
    }

    /// Which run of the handler this is for the message, from 1.
    pub fn attempt(&self) -> u32 {
        self.scope.attempt
    }

    /// The service running the handler.
    pub fn service(&self) -> &str {
        &self.scope.handler.service
    }

    /// The handler's name.
    pub fn handler(&self) -> &str {
        self.scope.handler.handler
    }

    /// Publishes a follow-up event once the handler has succeeded.
    ///
    /// # Errors
    ///
    /// [`PublishError::Undeclared`] when the handler did not declare `E` in `emits(...)` —
    /// the run then fails permanently even if the handler ignores this error —,
    /// [`PublishError::Encode`] when the event does not serialize, and
    /// [`PublishError::HandlerReturned`] when called after the handler returned.
    pub fn publish<E: Event>(&self, event: &E) -> Result<(), PublishError> {
        let handler = &self.scope.handler;
        if !handler
            .emits
            .iter()
            .any(|e| e.name == E::NAME && e.version == E::VERSION)
        {
            let error = PublishError::Undeclared {
                handler: handler.queue.clone(),
                event: E::event_type(),
                declared: declared_list(handler.emits),
            };
            let mut outbox = self.lock();
            if outbox.undeclared.is_none() {
                outbox.undeclared = Some(PublishError::Undeclared {
                    handler: handler.queue.clone(),
                    event: E::event_type(),
                    declared: declared_list(handler.emits),
                });
            }
            return Err(error);
        }
        let body = encode_body(event).map_err(|source| PublishError::Encode {
            event: E::event_type(),
            source,
        })?;
        let key = event.key();
        let incoming = &self.scope.meta;
        let mut outbox = self.lock();
        if outbox.closed {
            return Err(PublishError::HandlerReturned);
        }
        let seq = outbox.messages.len() as u32;
        let id = derived_id(incoming.id, &[&handler.queue, E::NAME], seq);
        let mut extra = Headers::new();
        let trace = trace::write_current_span(&mut extra, &incoming.headers).unwrap_or_else(|| {
            trace::keep_state(&mut extra, &incoming.headers);
            self.own_trace().child()
        });
        outbox.messages.push(Message {
            meta: Metadata {
                id,
                name: Cow::Borrowed(E::NAME),
                version: E::VERSION,
                source: handler.service.clone(),
                time: SystemTime::now(),
                correlation_id: incoming.correlation_id,
                causation_id: Some(incoming.id),
                key,
                attempt: 0,
                retry_tier: 0,
                trace: Some(trace),
                headers: extra,
            },
            body,
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.scope
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn declared_list(emits: &[EventType]) -> String {
    if emits.is_empty() {
        return "nothing".to_owned();
    }
    emits
        .iter()
        .map(|e| format!("`{}`", e))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("handler", &self.scope.handler.queue)
            .field("message_id", &self.scope.meta.id)
            .field("correlation_id", &self.scope.meta.correlation_id)
            .field("attempt", &self.scope.attempt)
            .finish()
    }
}
