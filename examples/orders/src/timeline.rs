//! A readable timeline of what the services do with each message.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use choreo::{Observation, Observer, Outcome};
use uuid::Uuid;

/// An [`Observer`] that writes one line per outcome to a sink and counts the outcomes.
///
/// Register a clone on every service with [`Service::observe`](choreo::Service::observe);
/// the clones share the sink and the counts.
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
            }),
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
    }
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
