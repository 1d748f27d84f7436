//! A readable timeline of what the services do with each message.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use choreo::transport::Topology;
use choreo::{Observation, Observer, Outcome};
use tokio::sync::watch;
use uuid::Uuid;

/// An [`Observer`] that writes one line per outcome to a sink and counts the outcomes.
///
/// Register a clone on every service with [`Service::observe`](choreo::Service::observe);
/// the clones share the sink and the counts.
///
/// Told which queues each event reaches ([`Timeline::route`]) and what is published from
/// outside the services ([`Timeline::expect`]), it also knows how many deliveries still owe
/// an outcome, and [`Timeline::settled`] waits until none does: how to tell that a broker
/// has gone quiet without polling its queues.
#[derive(Clone)]
pub struct Timeline {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    sink: Box<dyn Fn(&str) + Send + Sync>,
    handled: AtomicUsize,
    retried: AtomicUsize,
    poisoned: AtomicUsize,
    duplicates: AtomicUsize,
    /// Deliveries still owed an outcome: handled, duplicate or poisoned.
    open: watch::Sender<i64>,
    /// How many handler queues each routing key reaches.
    routes: Mutex<HashMap<String, i64>>,
}

/// How many outcomes of each kind a [`Timeline`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages handled and acknowledged.
    pub handled: usize,
    /// Failed runs that were retried.
    pub retried: usize,
    /// Messages moved to a poison queue.
    pub poisoned: usize,
    /// Messages skipped as already handled.
    pub duplicates: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handled {}, retried {}, poisoned {}, duplicates {}",
            self.handled, self.retried, self.poisoned, self.duplicates
        )
    }
}

impl Timeline {
    /// A timeline that hands each line to `sink`, timed from now.
    pub fn new(sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                sink: Box::new(sink),
                handled: AtomicUsize::new(0),
                retried: AtomicUsize::new(0),
                poisoned: AtomicUsize::new(0),
                duplicates: AtomicUsize::new(0),
                open: watch::Sender::new(0),
                routes: Mutex::default(),
            }),
        }
    }

    /// Learns which handler queues each event reaches from a service's topology, so that
    /// every event published counts one open delivery per queue bound to it.
    pub fn route(&self, topology: &Topology) {
        let mut routes = self.routes();
        for binding in topology.queues.iter().flat_map(|q| &q.bindings) {
            *routes.entry(binding.routing_key.clone()).or_default() += 1;
        }
    }

    /// Notes that a message with `routing_key` is about to be published from outside the
    /// services: each queue it reaches owes an outcome. Call it before publishing.
    pub fn expect(&self, routing_key: &str) {
        let fan_out = self.fan_out(routing_key);
        self.inner.open.send_modify(|open| *open += fan_out);
    }

    /// Deliveries that still owe an outcome.
    pub fn open(&self) -> i64 {
        *self.inner.open.borrow()
    }

    /// Waits until every delivery has had its final outcome (handled, duplicate or
    /// poisoned), including those of the events published on the way, for at most
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// [`Unsettled`] when deliveries were still open after `timeout`.
    pub async fn settled(&self, timeout: Duration) -> Result<(), Unsettled> {
        let mut open = self.inner.open.subscribe();
        match tokio::time::timeout(timeout, open.wait_for(|open| *open <= 0)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Unsettled {
                open: self.open(),
                waited: timeout,
            }),
        }
    }

    fn fan_out(&self, routing_key: &str) -> i64 {
        self.routes().get(routing_key).copied().unwrap_or(0)
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        self.inner
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How an outcome changes the number of open deliveries.
    fn settles(&self, outcome: &Outcome<'_>) -> i64 {
        match outcome {
            Outcome::Handled { published } => {
                let follow_ups: i64 = published
                    .iter()
                    .map(|m| self.fan_out(&m.meta.routing_key()))
                    .sum();
                follow_ups - 1
            }
            Outcome::Duplicate | Outcome::Poisoned(_) => -1,
            // The broker delivers the message again, and that delivery owes an outcome too.
            Outcome::SettleFailed { .. } => 1,
            _ => 0,
        }
    }

    /// Writes a heading, e.g. the scenario about to run.
    pub fn section(&self, title: &str) {
        (self.inner.sink)(&format!("\n── {title}"));
    }

    /// The outcomes counted so far.
    pub fn counts(&self) -> Counts {
        let inner = &self.inner;
        Counts {
            handled: inner.handled.load(Ordering::SeqCst),
            retried: inner.retried.load(Ordering::SeqCst),
            poisoned: inner.poisoned.load(Ordering::SeqCst),
            duplicates: inner.duplicates.load(Ordering::SeqCst),
        }
    }

    fn count(&self, outcome: &Outcome<'_>) {
        let inner = &self.inner;
        let counter = match outcome {
            Outcome::Handled { .. } => &inner.handled,
            Outcome::Retrying { .. } => &inner.retried,
            Outcome::Poisoned(_) => &inner.poisoned,
            Outcome::Duplicate => &inner.duplicates,
            _ => return,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

impl Observer for Timeline {
    fn observe(&self, observation: &Observation<'_>) {
        self.count(&observation.outcome);
        let settles = self.settles(&observation.outcome);
        let (event, key, flow) = match observation.meta {
            Some(meta) => (
                meta.name.as_ref(),
                meta.key.as_deref().unwrap_or("-"),
                short_id(meta.correlation_id),
            ),
            None => ("(unreadable)", "-", "-".to_owned()),
        };
        let line = format!(
            "{:>7.3}s  {:<30} {:<25} {key:<9} flow {flow:<8}  {}",
            self.inner.started.elapsed().as_secs_f64(),
            observation.queue,
            event,
            describe(&observation.outcome),
        );
        (self.inner.sink)(&line);
        // After the line, so that whoever waits for quiet has seen every line by then.
        if settles != 0 {
            self.inner.open.send_modify(|open| *open += settles);
        }
    }
}

/// Deliveries were still open when [`Timeline::settled`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{open} deliveries still open after {waited:?}")]
pub struct Unsettled {
    /// Deliveries still owed an outcome.
    pub open: i64,
    /// How long it waited.
    pub waited: Duration,
}

impl fmt::Debug for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeline")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

/// The last eight hex digits of an id: its random part, since a UUID v7 starts with the time.
pub fn short_id(id: Uuid) -> String {
    format!("{:08x}", id.as_u128() & 0xffff_ffff)
}

fn describe(outcome: &Outcome<'_>) -> String {
    match outcome {
        Outcome::Handled { published: [] } => "handled".to_owned(),
        Outcome::Handled { published } => {
            let names: Vec<&str> = published.iter().map(|m| m.meta.name.as_ref()).collect();
            format!("handled → {}", names.join(", "))
        }
        Outcome::Duplicate => "duplicate: already handled, skipped".to_owned(),
        Outcome::Retrying {
            attempt,
            error,
            tier,
            delay,
        } => {
            let route = match tier {
                Some(tier) => format!("retry tier {}", tier + 1),
                None => "immediate retry".to_owned(),
            };
            format!(
                "attempt {attempt} failed ({error}); {route} in {}",
                millis(*delay)
            )
        }
        Outcome::Deferred { delay } => {
            format!("deferred {}: another run holds the key", millis(*delay))
        }
        Outcome::Poisoned(failure) => format!("poisoned ({}): {}", failure.kind, failure.message),
        Outcome::SettleFailed { error } => format!("not settled, the broker redelivers: {error}"),
        other => format!("{other:?}"),
    }
}

fn millis(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}
