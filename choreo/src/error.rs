//! Errors.

use std::borrow::Cow;
use std::fmt;

use crate::event::EventType;

/// A boxed error that crosses threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with choreo's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a service or transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; the message names it.
    #[error("invalid configuration: {setting}: {reason}")]
    Config {
        /// The setting, e.g. `service name` or `handler charge-card: concurrency`.
        setting: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The service could not start: what it was told to run is not what it would run.
    #[error("service `{service}` cannot start: {reason}")]
    Startup {
        /// The service.
        service: String,
        /// What is wrong.
        reason: String,
    },
    /// A running consumer stopped by crashing; its messages went back to the broker.
    #[error("service `{service}`: the consumer of `{queue}` crashed")]
    Crashed {
        /// The service.
        service: String,
        /// The handler queue.
        queue: String,
    },
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The idempotency store failed.
    #[error("idempotency store: {0}")]
    Store(#[source] BoxError),
}

impl Error {
    pub(crate) fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// An error from a [`Transport`](crate::Transport).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No queue is bound to the message's routing key, and unroutable messages are errors.
    #[error("unroutable: no queue is bound to `{routing_key}` on exchange `{exchange}`")]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The named queue does not exist.
    #[error("no queue named `{0}`")]
    NoSuchQueue(String),
    /// The transport is closed.
    #[error("transport closed")]
    Closed,
    /// Any other failure of the underlying connection.
    #[error("{message}")]
    Other {
        /// What happened.
        message: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The handler did not declare the event in `emits(...)`.
    #[error("handler `{handler}` does not declare `{event}` in `emits(...)`; declared: {declared}")]
    Undeclared {
        /// The publishing handler.
        handler: String,
        /// The event it tried to publish.
        event: EventType,
        /// What it declared, for the message.
        declared: String,
    },
    /// The event could not be serialized.
    #[error("cannot serialize `{event}`: {source}")]
    Encode {
        /// The event.
        event: EventType,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The handler already returned; its context no longer publishes.
    #[error("the handler that owns this context has already returned")]
    HandlerReturned,
    /// The transport did not confirm the publish.
    #[error("publish not confirmed: {0}")]
    Transport(#[from] TransportError),
}

/// The error a handler returns.
///
/// Transient errors are retried by the handler's [`RetryPolicy`](crate::RetryPolicy);
/// permanent ones send the message straight to its poison queue. Any error converts into a
/// transient `HandlerError` with `?`; mark one permanent with [`HandlerError::permanent`] or
/// [`ResultExt::permanent`].
///
/// `HandlerError` deliberately does not implement `std::error::Error`, so that every error
/// converts into it.
pub struct HandlerError {
    kind: HandlerErrorKind,
    source: ErrorSource,
}

enum ErrorSource {
    Message(Cow<'static, str>),
    Error(BoxError),
}

/// Whether a [`HandlerError`] is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandlerErrorKind {
    /// Retry according to the policy.
    Transient,
    /// Do not retry; poison the message.
    Permanent,
}

impl HandlerError {
    /// A transient failure caused by `error`.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self {
            kind: HandlerErrorKind::Transient,
            source: ErrorSource::Error(error.into()),
        }
    }

    /// A permanent failure caused by `error`: the message goes to the poison queue.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            kind: HandlerErrorKind::Permanent,
            source: ErrorSource::Error(error.into()),
        }
    }

    /// A transient failure described by `message`.
    pub fn msg(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: HandlerErrorKind::Transient,
            source: ErrorSource::Message(message.into()),
        }
    }

    /// A permanent failure described by `message`.
    pub fn permanent_msg(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: HandlerErrorKind::Permanent,
            source: ErrorSource::Message(message.into()),
        }
    }

    /// Transient or permanent.
    pub fn kind(&self) -> HandlerErrorKind {
        self.kind
    }

    /// Whether the policy retries this error.
    pub fn is_transient(&self) -> bool {
        self.kind == HandlerErrorKind::Transient
    }

    /// Whether this error poisons the message at once.
    pub fn is_permanent(&self) -> bool {
        self.kind == HandlerErrorKind::Permanent
    }

    /// The underlying error, when there is one.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match &self.source {
            ErrorSource::Error(e) => Some(e.as_ref()),
            ErrorSource::Message(_) => None,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            ErrorSource::Message(m) => f.write_str(m),
            ErrorSource::Error(e) => {
                write!(f, "{e}")?;
                let mut cause = e.source();
                while let Some(c) = cause {
                    write!(f, ": {c}")?;
                    cause = c.source();
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("message", &self.to_string())
            .finish()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::transient(error)
    }
}

/// Marks the error of a `Result` as permanent or transient for a handler.
///
/// ```
/// use choreo::{HandlerError, ResultExt};
///
/// fn parse(input: &str) -> Result<u32, HandlerError> {
///     // A bad amount will never parse, however often we retry.
///     let amount = input.parse::<u32>().permanent()?;
///     Ok(amount)
/// }
/// assert!(parse("x").unwrap_err().is_permanent());
/// ```
pub trait ResultExt<T> {
    /// Turns the error into a permanent [`HandlerError`].
    ///
    /// # Errors
    ///
    /// The original error, marked permanent.
    fn permanent(self) -> Result<T, HandlerError>;

    /// Turns the error into a transient [`HandlerError`].
    ///
    /// # Errors
    ///
    /// The original error, marked transient.
    fn transient(self) -> Result<T, HandlerError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn permanent(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::permanent)
    }

    fn transient(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::transient)
    }
}
