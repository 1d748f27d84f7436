//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! choreo records these whether or not anything listens; install a recorder (for example
//! `metrics-exporter-prometheus`) to export them. Every series carries the labels `service`
//! and `handler` (the handler's name), except the publish histogram, which carries `source`.
//!
//! | name | kind | extra labels | counts |
//! |---|---|---|---|
//! | `choreo_messages_handled_total` | counter | | messages handled and acknowledged |
//! | `choreo_messages_retried_total` | counter | `delay` = `immediate` or `delayed` | failed runs that will run again |
//! | `choreo_messages_poisoned_total` | counter | `kind` (a [`FailureKind`]) | messages moved to a poison queue |
//! | `choreo_messages_duplicate_total` | counter | | duplicates acknowledged without running |
//! | `choreo_messages_deferred_total` | counter | | messages parked while another run held their key |
//! | `choreo_settle_failures_total` | counter | | acknowledgements or moves the broker did not take |
//! | `choreo_handle_duration_seconds` | histogram | | from delivery to the outcome, retries included |
//! | `choreo_publish_duration_seconds` | histogram | `source` instead of `handler` | from publish to the broker's confirm |

use std::time::Duration;

use ::metrics::{Counter, Histogram, counter, histogram};

use crate::observe::Outcome;
use crate::transport::FailureKind;

/// Messages handled and acknowledged.
pub const HANDLED: &str = "choreo_messages_handled_total";
/// Failed runs that will run again; label `delay` is `immediate` or `delayed`.
pub const RETRIED: &str = "choreo_messages_retried_total";
/// Messages moved to a poison queue; label `kind`.
pub const POISONED: &str = "choreo_messages_poisoned_total";
/// Duplicates acknowledged without running the handler.
pub const DUPLICATES: &str = "choreo_messages_duplicate_total";
/// Messages parked while another run held their key.
pub const DEFERRED: &str = "choreo_messages_deferred_total";
/// Acknowledgements or moves the broker did not take.
pub const SETTLE_FAILURES: &str = "choreo_settle_failures_total";
/// Seconds from delivery to the outcome.
pub const HANDLE_SECONDS: &str = "choreo_handle_duration_seconds";
/// Seconds from publish to the broker's confirm.
pub const PUBLISH_SECONDS: &str = "choreo_publish_duration_seconds";

/// One handler's series, registered once so that recording is an atomic add.
pub(crate) struct HandlerMetrics {
    service: String,
    handler: String,
    handled: Counter,
    retried_immediate: Counter,
    retried_delayed: Counter,
    duplicates: Counter,
    deferred: Counter,
    settle_failures: Counter,
    duration: Histogram,
    publish: Histogram,
}

impl HandlerMetrics {
    pub(crate) fn new(service: &str, handler: &str) -> Self {
        let labels = [
            ("service", service.to_owned()),
            ("handler", handler.to_owned()),
        ];
        let retried = |delay: &'static str| counter!(RETRIED, "service" => service.to_owned(), "handler" => handler.to_owned(), "delay" => delay);
        Self {
            service: service.to_owned(),
            handler: handler.to_owned(),
            handled: counter!(HANDLED, &labels),
            retried_immediate: retried("immediate"),
            retried_delayed: retried("delayed"),
            duplicates: counter!(DUPLICATES, &labels),
            deferred: counter!(DEFERRED, &labels),
            settle_failures: counter!(SETTLE_FAILURES, &labels),
            duration: histogram!(HANDLE_SECONDS, &labels),
            publish: publish_histogram(service),
        }
    }

    pub(crate) fn record(&self, outcome: &Outcome<'_>, elapsed: Duration) {
        match outcome {
            Outcome::Handled { .. } => {
                self.handled.increment(1);
                self.duration.record(elapsed);
            }
            Outcome::Retrying { tier: None, .. } => self.retried_immediate.increment(1),
            Outcome::Retrying { tier: Some(_), .. } => {
                self.retried_delayed.increment(1);
                self.duration.record(elapsed);
            }
            Outcome::Duplicate => self.duplicates.increment(1),
            Outcome::Deferred { .. } => self.deferred.increment(1),
            Outcome::Poisoned(failure) => {
                self.poisoned(failure.kind).increment(1);
                self.duration.record(elapsed);
            }
            Outcome::SettleFailed { .. } => self.settle_failures.increment(1),
        }
    }

    /// Poisonings are rare: their series, one per kind, is looked up when needed.
    fn poisoned(&self, kind: FailureKind) -> Counter {
        counter!(
            POISONED,
            "service" => self.service.clone(),
            "handler" => self.handler.clone(),
            "kind" => kind.as_str()
        )
    }

    pub(crate) fn published(&self, elapsed: Duration) {
        self.publish.record(elapsed);
    }
}

/// The publish histogram of `source`.
pub(crate) fn publish_histogram(source: &str) -> Histogram {
    histogram!(PUBLISH_SECONDS, "source" => source.to_owned())
}
