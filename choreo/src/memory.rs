//! The in-memory transport: the embedded default for tests and local runs.
//!
//! It keeps RabbitMQ's model — domain exchanges, one queue per handler, delayed retry tiers,
//! a poison queue per handler — inside the process, and carries real JSON bodies so tests
//! exercise the real codec. Its state can be inspected at any time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::envelope::{Message, Rfc3339, headers};
use crate::error::TransportError;
use crate::transport::{Consumer, Delivery, Failure, QueueSpec, Retry, Topology, Transport};

/// What publishing an event that no queue is bound to does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unroutable {
    /// The publish fails with [`TransportError::Unroutable`], as with RabbitMQ's `mandatory`.
    #[default]
    Error,
    /// The message is dropped (and still recorded when recording is on).
    Drop,
}

/// An in-process broker.
///
/// Clones share the broker. Delayed retries run on the real clock, or on a manual one that
/// only [`MemoryTransport::advance`] moves, so tests never wait for real seconds.
#[derive(Clone)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

/// Queues bound to each event name, with the version each binding reads.
type Routes = HashMap<String, Vec<(u32, Arc<Queue>)>>;

struct Inner {
    routes: RwLock<Routes>,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    unroutable: Unroutable,
    published: Option<Mutex<Vec<Message>>>,
    clock: Clock,
    scheduler: Mutex<BinaryHeap<Reverse<Scheduled>>>,
    scheduler_wake: Arc<Notify>,
    scheduler_running: AtomicBool,
    sequence: AtomicU64,
}

enum Clock {
    Real(Instant),
    Manual(Mutex<Duration>),
}

struct Scheduled {
    due: Duration,
    seq: u64,
    queue: Arc<Queue>,
    message: Message,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Queue {
    spec: QueueSpec,
    ready: Mutex<VecDeque<Message>>,
    notify: Notify,
    in_flight: AtomicUsize,
    retrying: AtomicUsize,
    /// Messages not yet acknowledged or poisoned: ready, in flight or retrying. Moves between
    /// those states leave it unchanged, so it is exact where a sum of the three is not.
    outstanding: AtomicUsize,
    acked: AtomicU64,
    poisoned: Mutex<Vec<PoisonedMessage>>,
}

/// A message in a poison queue, byte for byte as it arrived, with why it failed.
#[derive(Clone, Debug)]
pub struct PoisonedMessage {
    /// The message as the handler received it.
    pub message: Message,
    /// The failure, also written as headers.
    pub failure: Failure,
}

impl PoisonedMessage {
    /// The failure headers added to the message.
    pub fn failure_headers(&self) -> [(&'static str, String); 8] {
        self.failure.headers()
    }
}

/// What one queue holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting for a consumer.
    pub ready: usize,
    /// Delivered and not yet settled.
    pub in_flight: usize,
    /// Waiting in a delayed retry tier.
    pub retrying: usize,
    /// In the poison queue.
    pub poisoned: usize,
    /// Acknowledged since the queue was declared.
    pub acked: u64,
    /// Neither acknowledged nor poisoned yet: ready, in flight or retrying.
    pub outstanding: usize,
}

impl QueueStats {
    /// Nothing ready, in flight or retrying.
    pub fn is_idle(&self) -> bool {
        self.outstanding == 0
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTransport {
    /// A broker on the real clock where unroutable publishes are errors.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a broker.
    pub fn builder() -> MemoryTransportBuilder {
        MemoryTransportBuilder::default()
    }

    /// The names of every declared handler queue, sorted.
    pub fn queues(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.lock_queues().keys().cloned().collect();
        names.sort();
        names
    }

    /// What `queue` holds now.
    ///
    /// # Errors
    ///
    /// [`TransportError::NoSuchQueue`] for an undeclared queue.
    pub fn stats(&self, queue: &str) -> Result<QueueStats, TransportError> {
        Ok(self.inner.queue(queue)?.stats())
    }

    /// Whether no queue has anything ready, in flight or waiting to be retried.
    pub fn is_idle(&self) -> bool {
        self.inner
            .lock_queues()
            .values()
            .all(|q| q.stats().is_idle())
    }

    /// Whether every outstanding message is waiting in a delayed retry tier (and at least one
    /// is): only the clock can move things on.
    pub(crate) fn only_retries_waiting(&self) -> bool {
        let queues = self.inner.lock_queues();
        let mut waiting = 0;
        for q in queues.values() {
            let retrying = q.retrying.load(Ordering::SeqCst);
            if q.outstanding.load(Ordering::SeqCst) != retrying {
                return false;
            }
            waiting += retrying;
        }
        waiting > 0
    }

    /// The messages in `queue`'s poison queue.
    ///
    /// # Errors
    ///
    /// [`TransportError::NoSuchQueue`] for an undeclared queue.
    pub fn poisoned(&self, queue: &str) -> Result<Vec<PoisonedMessage>, TransportError> {
        Ok(self.inner.queue(queue)?.lock_poisoned().clone())
    }

    /// Moves every poisoned message of `queue` back to it, attempts reset; returns how many.
    ///
    /// # Errors
    ///
    /// [`TransportError::NoSuchQueue`] for an undeclared queue.
    pub fn replay_poisoned(&self, queue: &str) -> Result<usize, TransportError> {
        let queue = self.inner.queue(queue)?;
        let poisoned = std::mem::take(&mut *queue.lock_poisoned());
        let count = poisoned.len();
        for PoisonedMessage { mut message, .. } in poisoned {
            message.meta.attempt = 0;
            message.meta.retry_tier = 0;
            message.meta.headers.remove(headers::FIRST_FAILURE);
            for name in headers::failure::ALL {
                message.meta.headers.remove(name);
            }
            queue.enqueue(message);
        }
        Ok(count)
    }

    /// Puts `message` straight into a handler queue, bypassing routing: for tests that need
    /// a message no well-behaved publisher would send.
    ///
    /// # Errors
    ///
    /// [`TransportError::NoSuchQueue`] for an undeclared queue.
    pub fn inject(&self, queue: &str, message: Message) -> Result<(), TransportError> {
        self.inner.queue(queue)?.enqueue(message);
        Ok(())
    }

    /// Every message published so far, when recording is on; empty otherwise.
    pub fn published(&self) -> Vec<Message> {
        self.inner
            .published
            .as_ref()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    /// Waits until no queue has anything ready, in flight or waiting to be retried, polling
    /// every millisecond. On the manual clock, waiting retries only fall due with
    /// [`MemoryTransport::advance`]; see [`TestHarness::settle`](crate::testing::TestHarness::settle).
    ///
    /// # Errors
    ///
    /// [`TransportError::Other`] naming the busy queues when `timeout` passes first.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<(), TransportError> {
        let deadline = Instant::now() + timeout;
        while !self.is_idle() {
            if Instant::now() >= deadline {
                return Err(TransportError::Other {
                    message: format!("not idle after {timeout:?}: {}", self.busy()),
                    source: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// The queues with something ready, in flight or retrying, in words.
    pub(crate) fn busy(&self) -> String {
        self.queues()
            .into_iter()
            .filter_map(|q| {
                let stats = self.stats(&q).ok()?;
                (!stats.is_idle()).then(|| {
                    format!(
                        "`{q}` has {} ready, {} in flight, {} retrying",
                        stats.ready, stats.in_flight, stats.retrying
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Moves the manual clock forward by `by`, releasing retries that fall due.
    ///
    /// Does nothing on the real clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(now) = &self.inner.clock {
            let due = {
                let mut now = now.lock().unwrap_or_else(PoisonError::into_inner);
                *now += by;
                *now
            };
            self.inner.release_due(due);
        }
    }

    /// How long until the next delayed retry falls due, if one is waiting.
    pub fn next_retry_in(&self) -> Option<Duration> {
        let heap = self.inner.lock_scheduler();
        let Reverse(next) = heap.peek()?;
        Some(next.due.saturating_sub(self.inner.now()))
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("queues", &self.queues())
            .finish_non_exhaustive()
    }
}

/// Configures a [`MemoryTransport`].
#[derive(Clone, Debug, Default)]
pub struct MemoryTransportBuilder {
    unroutable: Unroutable,
    record: bool,
    manual_clock: bool,
}

impl MemoryTransportBuilder {
    /// What an unroutable publish does (default: an error).
    #[must_use]
    pub fn unroutable(mut self, unroutable: Unroutable) -> Self {
        self.unroutable = unroutable;
        self
    }

    /// Keeps a copy of every published message for [`MemoryTransport::published`].
    #[must_use]
    pub fn record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    /// Runs delayed retries on a manual clock moved by [`MemoryTransport::advance`].
    #[must_use]
    pub fn manual_clock(mut self, manual: bool) -> Self {
        self.manual_clock = manual;
        self
    }

    /// Builds the broker.
    pub fn build(self) -> MemoryTransport {
        MemoryTransport {
            inner: Arc::new(Inner {
                routes: RwLock::default(),
                queues: Mutex::default(),
                unroutable: self.unroutable,
                published: self.record.then(Mutex::default),
                clock: if self.manual_clock {
                    Clock::Manual(Mutex::new(Duration::ZERO))
                } else {
                    Clock::Real(Instant::now())
                },
                scheduler: Mutex::default(),
                scheduler_wake: Arc::new(Notify::new()),
                scheduler_running: AtomicBool::new(false),
                sequence: AtomicU64::new(0),
            }),
        }
    }
}

impl Inner {
    fn lock_queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Queue>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_scheduler(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Scheduled>>> {
        self.scheduler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self, name: &str) -> Result<Arc<Queue>, TransportError> {
        self.lock_queues()
            .get(name)
            .cloned()
            .ok_or_else(|| TransportError::NoSuchQueue(name.to_owned()))
    }

    fn now(&self) -> Duration {
        match &self.clock {
            Clock::Real(epoch) => epoch.elapsed(),
            Clock::Manual(now) => *now.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    fn schedule(self: &Arc<Self>, queue: Arc<Queue>, message: Message, delay: Duration) {
        queue.retrying.fetch_add(1, Ordering::SeqCst);
        let due = self.now() + delay;
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.lock_scheduler().push(Reverse(Scheduled {
            due,
            seq,
            queue,
            message,
        }));
        if matches!(self.clock, Clock::Real(_)) {
            if !self.scheduler_running.swap(true, Ordering::SeqCst) {
                tokio::spawn(run_scheduler(Arc::downgrade(self)));
            }
            self.scheduler_wake.notify_one();
        }
    }

    fn release_due(&self, now: Duration) {
        loop {
            let next = {
                let mut heap = self.lock_scheduler();
                match heap.peek() {
                    Some(Reverse(s)) if s.due <= now => heap.pop(),
                    _ => None,
                }
            };
            let Some(Reverse(scheduled)) = next else {
                return;
            };
            scheduled.queue.push(scheduled.message);
            scheduled.queue.retrying.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

async fn run_scheduler(inner: Weak<Inner>) {
    loop {
        // Hold only a weak reference while waiting, so that dropping the transport ends the
        // task (its `Drop` wakes us).
        let (wake, wait) = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let now = inner.now();
            inner.release_due(now);
            let next = inner.lock_scheduler().peek().map(|Reverse(s)| s.due);
            let wait = next.map_or(Duration::from_secs(3600), |due| due.saturating_sub(now));
            (Arc::clone(&inner.scheduler_wake), wait)
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.scheduler_wake.notify_one();
    }
}

impl Queue {
    fn new(spec: QueueSpec) -> Self {
        Self {
            spec,
            ready: Mutex::default(),
            notify: Notify::new(),
            in_flight: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(0),
            acked: AtomicU64::new(0),
            poisoned: Mutex::default(),
        }
    }

    fn lock_ready(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_poisoned(&self) -> std::sync::MutexGuard<'_, Vec<PoisonedMessage>> {
        self.poisoned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a new message to the queue.
    fn enqueue(&self, message: Message) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        self.push(message);
    }

    /// Makes a message that is already outstanding ready again.
    fn push(&self, message: Message) {
        self.lock_ready().push_back(message);
        self.notify.notify_one();
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            ready: self.lock_ready().len(),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            retrying: self.retrying.load(Ordering::SeqCst),
            poisoned: self.lock_poisoned().len(),
            acked: self.acked.load(Ordering::SeqCst),
            outstanding: self.outstanding.load(Ordering::SeqCst),
        }
    }
}

impl Transport for MemoryTransport {
    type Consumer = MemoryConsumer;

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        let mut queues = self.inner.lock_queues();
        for spec in &topology.queues {
            if let Some(existing) = queues.get(&spec.name) {
                if existing.spec.retry_tiers != spec.retry_tiers
                    || existing.spec.bindings != spec.bindings
                {
                    return Err(TransportError::Other {
                        message: format!(
                            "queue `{}` already exists with other arguments: retry tiers {:?} and bindings {:?}, asked for {:?} and {:?}",
                            spec.name,
                            existing.spec.retry_tiers,
                            existing.spec.bindings,
                            spec.retry_tiers,
                            spec.bindings
                        ),
                        source: None,
                    });
                }
                continue;
            }
            let queue = Arc::new(Queue::new(spec.clone()));
            queues.insert(spec.name.clone(), Arc::clone(&queue));
            let mut routes = self
                .inner
                .routes
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for binding in &spec.bindings {
                let (name, version) = split_routing_key(&binding.routing_key)?;
                routes
                    .entry(name.to_owned())
                    .or_default()
                    .push((version, Arc::clone(&queue)));
            }
        }
        Ok(())
    }

    async fn publish(&self, message: Message) -> Result<(), TransportError> {
        // A broker publish waits for its confirm; here nothing waits, so spend the task's
        // scheduling budget instead: a task that publishes in a loop still lets the tasks it
        // wakes, its consumers, run.
        tokio::task::consume_budget().await;
        let routes = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let version = message.meta.version;
        let mut targets = routes
            .get(&*message.meta.name)
            .into_iter()
            .flatten()
            .filter(|(v, _)| *v == version)
            .map(|(_, queue)| queue)
            .peekable();
        if targets.peek().is_none() && self.inner.unroutable == Unroutable::Error {
            return Err(TransportError::Unroutable {
                exchange: message.exchange().to_owned(),
                routing_key: message.meta.routing_key(),
            });
        }
        // Recorded before it is enqueued, so the log never shows a follow-up event before
        // the message that caused it.
        if let Some(published) = &self.inner.published {
            published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(message.clone());
        }
        while let Some(queue) = targets.next() {
            if targets.peek().is_none() {
                queue.enqueue(message);
                break;
            }
            queue.enqueue(message.clone());
        }
        Ok(())
    }

    async fn consume(&self, queue: &QueueSpec) -> Result<MemoryConsumer, TransportError> {
        Ok(MemoryConsumer {
            queue: self.inner.queue(&queue.name)?,
            inner: Arc::clone(&self.inner),
            cancelled: false,
        })
    }
}

fn split_routing_key(key: &str) -> Result<(&str, u32), TransportError> {
    key.rsplit_once(".v")
        .and_then(|(name, v)| Some((name, v.parse().ok()?)))
        .ok_or_else(|| TransportError::Other {
            message: format!("routing key `{key}` is not `<name>.v<version>`"),
            source: None,
        })
}

/// Deliveries of one in-memory queue.
pub struct MemoryConsumer {
    queue: Arc<Queue>,
    inner: Arc<Inner>,
    cancelled: bool,
}

impl fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("queue", &self.queue.spec.name)
            .finish_non_exhaustive()
    }
}

impl MemoryConsumer {
    fn try_take(&self) -> Option<MemoryDelivery> {
        let message = {
            let mut ready = self.queue.lock_ready();
            let message = ready.pop_front()?;
            self.queue.in_flight.fetch_add(1, Ordering::SeqCst);
            message
        };
        Some(MemoryDelivery {
            message: Some(message),
            queue: Arc::clone(&self.queue),
            inner: Arc::clone(&self.inner),
        })
    }
}

impl Consumer for MemoryConsumer {
    type Delivery = MemoryDelivery;

    async fn next(&mut self) -> Option<Result<MemoryDelivery, TransportError>> {
        loop {
            if self.cancelled {
                return None;
            }
            // Fast path: take a ready message without registering for a wake-up.
            if let Some(delivery) = self.try_take() {
                return Some(Ok(delivery));
            }
            let notified = self.queue.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(delivery) = self.try_take() {
                return Some(Ok(delivery));
            }
            notified.await;
        }
    }

    async fn cancel(&mut self) {
        self.cancelled = true;
        // Pass on a wake-up this consumer may have taken from a competing one.
        self.queue.notify.notify_one();
    }

    fn fork(&self) -> Option<Self> {
        Some(Self {
            queue: Arc::clone(&self.queue),
            inner: Arc::clone(&self.inner),
            cancelled: self.cancelled,
        })
    }
}

/// One message delivered from an in-memory queue. Dropping it unsettled requeues it.
pub struct MemoryDelivery {
    message: Option<Message>,
    queue: Arc<Queue>,
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDelivery")
            .field("queue", &self.queue.spec.name)
            .field("message", &self.message.as_ref().map(|m| m.meta.id))
            .finish()
    }
}

impl MemoryDelivery {
    fn take(&mut self) -> Message {
        self.message
            .take()
            .expect("a delivery is settled at most once: settling consumes it")
    }

    fn settled(&self) {
        self.queue.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Delivery for MemoryDelivery {
    fn message(&self) -> Result<&Message, &str> {
        self.message.as_ref().ok_or("settled")
    }

    async fn ack(mut self) -> Result<(), TransportError> {
        drop(self.take());
        self.queue.acked.fetch_add(1, Ordering::SeqCst);
        self.settled();
        self.queue.outstanding.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    async fn retry(mut self, retry: Retry) -> Result<(), TransportError> {
        let mut message = self.take();
        message.meta.attempt = retry.attempt;
        message.meta.retry_tier = retry.tiers_passed;
        message.meta.headers.insert(
            headers::FIRST_FAILURE,
            Rfc3339(retry.first_failure).to_string(),
        );
        self.inner
            .schedule(Arc::clone(&self.queue), message, retry.delay);
        self.settled();
        Ok(())
    }

    async fn poison(mut self, failure: Failure) -> Result<(), TransportError> {
        let mut message = self.take();
        for (name, value) in failure.headers() {
            message.meta.headers.insert(name, value);
        }
        self.queue
            .lock_poisoned()
            .push(PoisonedMessage { message, failure });
        self.settled();
        self.queue.outstanding.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    async fn requeue(mut self) -> Result<(), TransportError> {
        let message = self.take();
        self.queue.lock_ready().push_front(message);
        self.settled();
        self.queue.notify.notify_one();
        Ok(())
    }
}

impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.queue.lock_ready().push_front(message);
            self.settled();
            self.queue.notify.notify_one();
        }
    }
}
