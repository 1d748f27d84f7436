//! Errors of the RabbitMQ transport.

use std::time::Duration;

use choreo::TransportError;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// Why the RabbitMQ transport failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// A setting is invalid.
    #[error("invalid configuration: {setting}: {reason}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why, in plain words.
        reason: String,
        /// The client's error.
        #[source]
        source: Option<Box<lapin::Error>>,
    },
    /// A queue or exchange exists with other arguments than choreo declares.
    #[error(
        "{object} already exists with other arguments: {detail}; delete it or align the settings"
    )]
    TopologyConflict {
        /// E.g. ``queue `billing.charge-card` ``.
        object: String,
        /// Which argument differs, as the broker reported it.
        detail: String,
    },
    /// No queue is bound to the routing key.
    #[error("unroutable: no queue is bound to `{routing_key}` on exchange `{exchange}`")]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The body is larger than the configured limit.
    #[error("body of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A publish was not confirmed in time, through every reconnection.
    #[error("publish to `{routing_key}` not confirmed within {waited:?}: {last_error}")]
    PublishTimeout {
        /// The routing key.
        routing_key: String,
        /// How long it waited.
        waited: Duration,
        /// The last failure seen.
        last_error: String,
    },
    /// A name is too long for AMQP (255 bytes).
    #[error("`{0}` is longer than AMQP's 255-byte limit for names")]
    NameTooLong(String),
    /// The transport was closed.
    #[error("transport closed")]
    Closed,
    /// The queue does not exist.
    #[error("no queue `{queue}` on the broker")]
    NoSuchQueue {
        /// The queue.
        queue: String,
    },
    /// An operation on poison queues was given a queue that is not one.
    #[error("`{queue}` is not a poison queue: their names end in `.poison`")]
    NotAPoisonQueue {
        /// The queue.
        queue: String,
    },
    /// The broker's management HTTP API, which lists queues, failed.
    #[error("the RabbitMQ management API at {url} {reason}")]
    Management {
        /// The API's base URL, without credentials.
        url: String,
        /// What went wrong and, where it can, how to fix it.
        reason: String,
    },
    /// Any other failure of the client or broker.
    #[error("{context}: {source}")]
    Broker {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: Box<lapin::Error>,
    },
}

impl AmqpError {
    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Config {
            setting,
            reason: reason.into(),
        }
    }

    pub(crate) fn broker(context: impl Into<String>, source: lapin::Error) -> Self {
        Self::Broker {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

impl From<AmqpError> for TransportError {
    fn from(error: AmqpError) -> Self {
        match error {
            AmqpError::Unroutable {
                exchange,
                routing_key,
            } => TransportError::Unroutable {
                exchange,
                routing_key,
            },
            AmqpError::Closed => TransportError::Closed,
            other => TransportError::Other {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}

/// The broker's error, when `error` is one.
pub(crate) fn amqp_error(error: &lapin::Error) -> Option<&lapin::protocol::AMQPError> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e),
        _ => None,
    }
}

/// Whether the broker refused a declaration because the object exists with other arguments.
pub(crate) fn is_precondition_failed(error: &lapin::Error) -> bool {
    amqp_error(error).is_some_and(|e| {
        matches!(
            e.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
        )
    })
}

/// Turns the broker's `inequivalent arg` text into plain words.
///
/// The broker says e.g. `PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q'
/// in vhost '/': received the value 'quorum' of type 'longstr' but current is none`.
pub(crate) fn describe_conflict(error: &lapin::Error) -> String {
    let text = amqp_error(error).map_or_else(
        || error.to_string(),
        |e| e.get_message().as_str().to_owned(),
    );
    let Some(rest) = text.split("inequivalent arg '").nth(1) else {
        return text;
    };
    let Some((arg, rest)) = rest.split_once('\'') else {
        return text;
    };
    let (wanted, current) = match rest.split_once("received ") {
        Some((_, tail)) => match tail.split_once(" but current is ") {
            Some((received, current)) => (received.trim(), current.trim()),
            None => (tail.trim(), "unknown"),
        },
        None => ("another value", "unknown"),
    };
    format!("`{arg}` is {current} on the broker, choreo declares {wanted}")
}

/// Plain words for a failed connection attempt.
pub(crate) fn describe_connect(error: &lapin::Error) -> String {
    if let Some(e) = amqp_error(error) {
        if matches!(
            e.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
        ) {
            return format!("the broker refused the credentials or vhost ({e})");
        }
        return format!("the broker refused the connection ({e})");
    }
    match error.kind() {
        lapin::ErrorKind::IOError(io) => format!("{io}"),
        lapin::ErrorKind::InvalidConnectionState(_) => {
            "the broker closed the connection during the handshake (wrong credentials or vhost?)"
                .to_owned()
        }
        _ => error.to_string(),
    }
}
