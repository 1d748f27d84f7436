//! Throughput and allocations of one choreo handler on the in-memory transport, against a
//! plain tokio channel measured in the same run.
//!
//! What is measured, per round of `EVENTS` events:
//!
//! - **choreo**: a `Service` with one `#[choreo::handler]` of `OrderPlaced` (a ~256-byte JSON
//!   event with a `#[choreo(key)]`) on a `MemoryTransport`, default settings — idempotency
//!   store, retry policy, handler timeout, concurrency 16. A producer task publishes every
//!   event through `choreo::Publisher` (serialize to JSON, build the envelope, route,
//!   enqueue). The window ends once the handler has seen every event and the queue is idle,
//!   that is every message is acknowledged.
//! - **plain**: a producer task serializes the same events with `serde_json` and sends the
//!   bodies over an unbounded `tokio::sync::mpsc` channel (unbounded like the in-memory
//!   queue); one consumer task decodes each body into `OrderPlaced` with `serde_json` and
//!   runs the same handler body. The window ends once the consumer has handled every event.
//!
//! Both handler bodies feed the same `Sink` (a count and a checksum); the checksums of the two
//! sides are compared every round, so neither side can skip work. The events are built
//! before each window and dropped after it, so neither time nor allocations include making
//! them. Both sides run on one multi-thread tokio runtime with 2 workers; the service and the
//! plain consumer stay up for the whole run, like long-lived consumers. After a warm-up of
//! each, rounds alternate which side goes first. Allocations are counted by `stats_alloc`
//! over each measured window, across all threads, and divided by the number of events.
//!
//! The target: choreo at no less than half the events per second of the plain channel.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

use std::alloc::System;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use choreo::{Event, HandlerError, MemoryTransport, Publisher, Service, State};
use serde::{Deserialize, Serialize};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::sync::{Notify, mpsc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Measured rounds, each running both sides once.
const ROUNDS: usize = 5;
/// Events per side in a measured round.
const EVENTS: u64 = 100_000;
/// Events per side in the warm-up.
const WARM_UP_EVENTS: u64 = 20_000;
/// The choreo handler's queue: `<service>.<handler>`.
const QUEUE: &str = "fulfilment.record-order";

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    #[choreo(key)]
    order_id: u64,
    customer_id: String,
    sku: String,
    quantity: u32,
    total_cents: u64,
    currency: String,
    shipping_address: String,
    channel: String,
}

impl OrderPlaced {
    /// The `id`-th order: distinct ids, so the idempotency store sees a new key every time.
    fn sample(id: u64) -> Self {
        Self {
            order_id: id,
            customer_id: format!("cus_{:032x}", id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            sku: format!("SKU-{:08}-BLUE-XL", id % 100_000_000),
            quantity: (id % 7 + 1) as u32,
            total_cents: 1_999 + id % 50_000,
            currency: "EUR".to_owned(),
            shipping_address: format!(
                "{} Rue de la Paix, 75002 Paris, France, floor {}, door {}",
                id % 200 + 1,
                id % 9,
                id % 4 + 1
            ),
            channel: "web-checkout".to_owned(),
        }
    }
}

/// Where both handlers put their work: a count, a checksum, and a wake-up at the target.
#[derive(Default)]
struct Sink {
    handled: AtomicU64,
    checksum: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Sink {
    /// Starts a round of `events` events.
    fn arm(&self, events: u64) {
        self.handled.store(0, Ordering::SeqCst);
        self.checksum.store(0, Ordering::SeqCst);
        self.target.store(events, Ordering::SeqCst);
    }

    /// The handler body shared by both sides.
    fn record(&self, order: &OrderPlaced) {
        let digest = order.total_cents
            ^ u64::from(order.quantity)
            ^ (order.customer_id.len() + order.sku.len() + order.shipping_address.len()) as u64;
        self.checksum.fetch_add(digest, Ordering::Relaxed);
        let handled = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if handled == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }

    /// Waits until the armed number of events is handled; returns the checksum.
    async fn finished(&self) -> u64 {
        self.done.notified().await;
        self.checksum.load(Ordering::SeqCst)
    }
}

#[choreo::handler]
async fn record_order(
    order: OrderPlaced,
    State(sink): State<Arc<Sink>>,
) -> Result<(), HandlerError> {
    sink.record(&order);
    Ok(())
}

/// One side's figures for one round.
#[derive(Clone, Copy)]
struct Measurement {
    events_per_sec: f64,
    allocs_per_event: f64,
    bytes_per_event: f64,
    checksum: u64,
}

impl Measurement {
    fn new(events: u64, elapsed: Duration, stats: stats_alloc::Stats, checksum: u64) -> Self {
        let n = events as f64;
        Self {
            events_per_sec: n / elapsed.as_secs_f64(),
            allocs_per_event: (stats.allocations + stats.reallocations) as f64 / n,
            bytes_per_event: stats.bytes_allocated as f64 / n,
            checksum,
        }
    }
}

/// The choreo side: a running service and a publisher on its transport.
struct Choreo {
    transport: MemoryTransport,
    publisher: Publisher<MemoryTransport>,
    sink: Arc<Sink>,
    _service: choreo::RunningService,
}

impl Choreo {
    async fn start() -> choreo::Result<Self> {
        let transport = MemoryTransport::new();
        let sink = Arc::new(Sink::default());
        let service = Service::new("fulfilment")
            .state(Arc::clone(&sink))
            .handler(record_order)
            .start(&transport)
            .await?;
        Ok(Self {
            publisher: Publisher::new(transport.clone(), "orders-api"),
            transport,
            sink,
            _service: service,
        })
    }

    async fn round(&self, events: Vec<OrderPlaced>) -> Result<Measurement, Box<dyn Error>> {
        let count = events.len() as u64;
        let events = Arc::new(events);
        let publisher = self.publisher.clone();
        let to_publish = Arc::clone(&events);
        self.sink.arm(count);

        let region = Region::new(GLOBAL);
        let started = Instant::now();
        let producer = tokio::spawn(async move {
            for event in to_publish.iter() {
                publisher.publish(event).await?;
            }
            Ok::<_, choreo::PublishError>(())
        });
        let checksum = self.sink.finished().await;
        producer.await??;
        // The handler has run for every event; wait for the last acknowledgements.
        while !self.transport.stats(QUEUE)?.is_idle() {
            tokio::task::yield_now().await;
        }
        let elapsed = started.elapsed();
        let stats = region.change();

        drop(events);
        Ok(Measurement::new(count, elapsed, stats, checksum))
    }
}

/// The plain side: a long-lived consumer task behind an unbounded channel.
struct Plain {
    bodies: mpsc::UnboundedSender<Vec<u8>>,
    sink: Arc<Sink>,
}

impl Plain {
    fn start() -> Self {
        let (bodies, mut received) = mpsc::unbounded_channel::<Vec<u8>>();
        let sink = Arc::new(Sink::default());
        let consumer_sink = Arc::clone(&sink);
        tokio::spawn(async move {
            while let Some(body) = received.recv().await {
                let order: OrderPlaced =
                    serde_json::from_slice(&body).expect("the producer writes valid events");
                consumer_sink.record(&order);
            }
        });
        Self { bodies, sink }
    }

    async fn round(&self, events: Vec<OrderPlaced>) -> Result<Measurement, Box<dyn Error>> {
        let count = events.len() as u64;
        let events = Arc::new(events);
        let bodies = self.bodies.clone();
        let to_send = Arc::clone(&events);
        self.sink.arm(count);

        let region = Region::new(GLOBAL);
        let started = Instant::now();
        let producer = tokio::spawn(async move {
            for event in to_send.iter() {
                let body = serde_json::to_vec(event)?;
                bodies
                    .send(body)
                    .map_err(|_| "the plain consumer stopped")?;
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(())
        });
        let checksum = self.sink.finished().await;
        producer.await?.map_err(|e| e as Box<dyn Error>)?;
        let elapsed = started.elapsed();
        let stats = region.change();

        drop(events);
        Ok(Measurement::new(count, elapsed, stats, checksum))
    }
}

fn batch(first_id: u64, events: u64) -> Vec<OrderPlaced> {
    (first_id..first_id + events)
        .map(OrderPlaced::sample)
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let choreo = Choreo::start().await?;
    let plain = Plain::start();

    let body_len = serde_json::to_vec(&OrderPlaced::sample(EVENTS))?.len();
    println!(
        "one handler, {body_len}-byte JSON event, {ROUNDS} rounds of {EVENTS} events per side \
         after a warm-up of {WARM_UP_EVENTS}, tokio multi-thread runtime with 2 workers"
    );

    // Ids never repeat across rounds: every choreo event is a new idempotency key.
    let mut next_id = 1;
    let mut take_ids = |events: u64| {
        let first = next_id;
        next_id += events;
        first
    };

    let first = take_ids(WARM_UP_EVENTS);
    choreo.round(batch(first, WARM_UP_EVENTS)).await?;
    plain.round(batch(first, WARM_UP_EVENTS)).await?;

    println!();
    println!(
        "{:>5}  {:>13} {:>10} {:>9}  {:>13} {:>10} {:>9}  {:>13}",
        "round",
        "choreo ev/s",
        "allocs/ev",
        "bytes/ev",
        "plain ev/s",
        "allocs/ev",
        "bytes/ev",
        "choreo/plain"
    );
    let mut rows = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let first = take_ids(EVENTS);
        let (c, p) = if round % 2 == 1 {
            let c = choreo.round(batch(first, EVENTS)).await?;
            (c, plain.round(batch(first, EVENTS)).await?)
        } else {
            let p = plain.round(batch(first, EVENTS)).await?;
            (choreo.round(batch(first, EVENTS)).await?, p)
        };
        if c.checksum != p.checksum {
            return Err(format!(
                "round {round}: the two sides handled different events (checksums {} and {})",
                c.checksum, p.checksum
            )
            .into());
        }
        let ratio = c.events_per_sec / p.events_per_sec;
        println!(
            "{round:>5}  {:>13.0} {:>10.2} {:>9.0}  {:>13.0} {:>10.2} {:>9.0}  {:>12.2}x",
            c.events_per_sec,
            c.allocs_per_event,
            c.bytes_per_event,
            p.events_per_sec,
            p.allocs_per_event,
            p.bytes_per_event,
            ratio
        );
        rows.push((c, p, ratio));
    }

    let column = |f: &dyn Fn(&(Measurement, Measurement, f64)) -> f64| {
        median(&mut rows.iter().map(f).collect::<Vec<_>>())
    };
    let ratio = column(&|r| r.2);
    println!(
        "{:>5}  {:>13.0} {:>10.2} {:>9.0}  {:>13.0} {:>10.2} {:>9.0}  {:>12.2}x",
        "med",
        column(&|r| r.0.events_per_sec),
        column(&|r| r.0.allocs_per_event),
        column(&|r| r.0.bytes_per_event),
        column(&|r| r.1.events_per_sec),
        column(&|r| r.1.allocs_per_event),
        column(&|r| r.1.bytes_per_event),
        ratio
    );
    println!();
    println!(
        "target choreo >= 0.50x plain: {} (median {ratio:.2}x)",
        if ratio >= 0.5 { "met" } else { "NOT met" }
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}
