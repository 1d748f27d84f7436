//! Throughput, latency and client CPU of one choreo handler on RabbitMQ, against plain lapin
//! doing the same work in the same process.
//!
//! What is measured, per round of `EVENTS` events and per queue type (classic, quorum):
//!
//! - **lapin**: one task publishes persistent JSON events (`serde_json::to_vec`, content type
//!   `application/json`, delivery mode 2, mandatory) to a topic exchange bound to a durable
//!   queue of the matching `x-queue-type`, on one confirm channel with `WINDOW` publishes in
//!   flight (each one a future that sends and then waits for its confirm, all polled from one
//!   `FuturesUnordered`: lapin resolves a publish only once its I/O thread has written it, so
//!   awaiting them one by one would cap the window's throughput). One consumer task with a
//!   per-consumer prefetch of `PREFETCH` and manual acknowledgements decodes each body into
//!   `OrderPlaced` with `serde_json`, runs the handler body, and acknowledges; acknowledgements
//!   are awaited concurrently for the same reason. Publishing and consuming use a connection
//!   each, as RabbitMQ recommends and as choreo does.
//! - **lapin+env**, a reference: the same plain lapin, sending each event with choreo's wire
//!   envelope (DESIGN §8: the message id, type, source, time and correlation properties, and
//!   the `ce-*`, `choreo-*` and `traceparent` headers, built per event by
//!   `choreo_amqp::envelope_properties`) to a queue of its own. It sends and receives the
//!   bytes choreo does, so it tells what the envelope costs apart from what choreo's runtime
//!   costs. Not part of the targets.
//! - **choreo**: a `Service` with one `#[choreo::handler]` of `OrderPlaced`, concurrency (and
//!   so prefetch) `PREFETCH`, the default in-memory idempotency store keyed by the event's
//!   `#[choreo(key)]`, default retry policy and timeout, on an `AmqpTransport` with the queue
//!   type under test. One task publishes through `AmqpTransport::publisher(..)` with `WINDOW`
//!   publishes in flight, polled from one `FuturesUnordered` as on the lapin side.
//!
//! A round starts when its publishing task starts and ends once the handler has seen every
//! event and every publish was confirmed. Every event carries the time it was handed to the
//! publisher; the handler records `now - sent` per event, which gives the end-to-end latency
//! percentiles and checks that every event arrived exactly once. The events are built before
//! each round and their ids never repeat, so every choreo event is a new idempotency key.
//!
//! Client CPU is this process's CPU time over the round (see [`CpuClock`]) divided by the
//! number of events: publishing and consuming together, user and system time, on every thread
//! (the 2 tokio workers and lapin's I/O threads). When the broker runs on this machine (a
//! `beam.smp` process is visible), its CPU time per event is shown too: client and broker
//! share the same cores, so throughput follows the sum of the two.
//!
//! All sides stay connected for the whole of a queue type's run, like long-lived services;
//! after a warm-up of each, rounds rotate which side goes first. Queue and exchange names
//! are unique per run, and everything declared is deleted at the end.
//!
//! The targets, on both queue types: choreo's throughput at least lapin's (median
//! ratio >= 1.0, no round below 0.95), and client CPU per message at most 1.15x lapin's.
//!
//! Settings from the environment: `CHOREO_AMQP_URL` (default: the local broker),
//! `AMQP_BENCH_EVENTS` (events per side per round), `AMQP_BENCH_ROUNDS` and
//! `AMQP_BENCH_QUEUES` (`classic`, `quorum` or `classic,quorum`).

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use choreo::transport::Topology;
use choreo::{Event, HandlerError, Publisher, RunningService, Service, State};
use choreo_amqp::{AmqpConfig, AmqpTransport, QueueType};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

type BoxError = Box<dyn Error + Send + Sync>;

/// Measured rounds per queue type, each running both sides once.
const ROUNDS: usize = 5;
/// Events per side in a measured round.
const EVENTS: u64 = 30_000;
/// Events per side in the warm-up of each queue type.
const WARM_UP_EVENTS: u64 = 10_000;
/// Publishes awaiting their confirm, per side.
const WINDOW: usize = 256;
/// Unacknowledged deliveries per consumer; choreo's handler concurrency.
const PREFETCH: u16 = 64;
/// The event's routing key: `<name>.v<version>`.
const ROUTING_KEY: &str = "orders.order-placed.v1";

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    #[choreo(key)]
    order_id: u64,
    /// When the event was handed to the publisher: nanoseconds since [`epoch`].
    sent_at_ns: u64,
    customer_id: String,
    sku: String,
    quantity: u32,
    total_cents: u64,
    currency: String,
    shipping_address: String,
}

impl OrderPlaced {
    /// The `id`-th order.
    fn sample(id: u64) -> Self {
        Self {
            order_id: id,
            sent_at_ns: 0,
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
        }
    }
}

fn batch(first_id: u64, events: u64) -> Vec<OrderPlaced> {
    (first_id..first_id + events)
        .map(OrderPlaced::sample)
        .collect()
}

/// The origin of the timestamps events carry.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Where both handlers put their work: a latency per event, and a wake-up at the last one.
struct Sink {
    /// The first order id of the round.
    base: AtomicU64,
    target: AtomicU64,
    handled: AtomicU64,
    duplicates: AtomicU64,
    /// Nanoseconds from publish to handler, by `order_id - base`; 0 while not yet handled.
    latencies: Box<[AtomicU64]>,
    done: Notify,
}

impl Sink {
    fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Self {
            base: AtomicU64::new(0),
            target: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            latencies: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            done: Notify::new(),
        })
    }

    /// Starts a round of `events` events from order id `base` on.
    fn arm(&self, base: u64, events: u64) {
        for slot in &self.latencies[..events as usize] {
            slot.store(0, Ordering::Relaxed);
        }
        self.handled.store(0, Ordering::SeqCst);
        self.duplicates.store(0, Ordering::SeqCst);
        self.base.store(base, Ordering::SeqCst);
        self.target.store(events, Ordering::SeqCst);
    }

    /// The handler body shared by both sides.
    fn record(&self, order: &OrderPlaced) {
        let latency = now_ns().saturating_sub(order.sent_at_ns).max(1);
        let index = order
            .order_id
            .wrapping_sub(self.base.load(Ordering::Relaxed));
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.latencies.get(i));
        let first = slot.is_some_and(|slot| slot.swap(latency, Ordering::Relaxed) == 0);
        if !first {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let handled = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if handled == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }

    /// The latencies of the round, sorted, once every event was handled.
    fn latencies(&self, events: u64) -> Result<Vec<u64>, BoxError> {
        let duplicates = self.duplicates.load(Ordering::SeqCst);
        if duplicates > 0 {
            return Err(format!("{duplicates} events reached the handler twice").into());
        }
        let mut all: Vec<u64> = self.latencies[..events as usize]
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .collect();
        if let Some(missing) = all.iter().position(|&ns| ns == 0) {
            return Err(format!("event {missing} of the round never reached the handler").into());
        }
        all.sort_unstable();
        Ok(all)
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

/// CPU time used by this process, all threads, user and system.
///
/// The scheduler's run time of each thread, in nanoseconds, from
/// `/proc/self/task/<tid>/schedstat`, summed over the threads. The tick counts of
/// `/proc/self/stat` (utime + stime) move in steps of 10 ms, 1-2 % of a round's CPU time:
/// too coarse to tell a ratio of 1.10 from 1.15. A thread that exits takes its run time with
/// it, so a round in which a thread vanished falls back to the tick counts; the runtime keeps
/// its threads for the whole run (workers, an idle blocking thread kept alive, lapin's I/O
/// thread per connection), so that does not happen in practice.
struct CpuClock {
    threads: HashMap<u32, u64>,
    ticks: u64,
}

/// `/proc` counts utime and stime in `USER_HZ`, 100 per second on Linux.
const USER_HZ: u64 = 100;

impl CpuClock {
    fn now() -> Result<Self, BoxError> {
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir("/proc/self/task")? {
            let entry = entry?;
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // The thread may have exited since the directory was listed.
            if let Ok(schedstat) = std::fs::read_to_string(entry.path().join("schedstat")) {
                let run_ns = schedstat
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse().ok())
                    .ok_or("unreadable /proc/self/task/*/schedstat")?;
                threads.insert(tid, run_ns);
            }
        }
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // Fields after the command name, which is in parentheses and may hold spaces: state
        // is field 3, utime 14 and stime 15.
        let after_name = stat.rsplit_once(')').ok_or("unreadable /proc/self/stat")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let tick = |i: usize| -> Result<u64, BoxError> {
            Ok(fields
                .get(i)
                .ok_or("short /proc/self/stat")?
                .parse::<u64>()?)
        };
        Ok(Self {
            threads,
            ticks: tick(11)? + tick(12)?,
        })
    }

    /// CPU time from `self` to `later`.
    fn until(&self, later: &Self) -> Duration {
        let vanished = self.threads.keys().any(|t| !later.threads.contains_key(t));
        if vanished {
            let ticks = later.ticks.saturating_sub(self.ticks);
            return Duration::from_millis(ticks * 1000 / USER_HZ);
        }
        let ns = later
            .threads
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        Duration::from_nanos(ns)
    }
}

/// One side's figures for one round.
#[derive(Clone, Copy)]
struct Measurement {
    msgs_per_sec: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_msg: Duration,
    broker_per_msg: Option<Duration>,
}

impl Measurement {
    fn new(
        events: u64,
        elapsed: Duration,
        cpu: Duration,
        broker: Option<Duration>,
        latencies: &[u64],
    ) -> Self {
        let at = |q: usize| {
            Duration::from_nanos(latencies[(latencies.len() * q / 100).min(latencies.len() - 1)])
        };
        let per_msg = |total: Duration| total / u32::try_from(events).unwrap_or(u32::MAX);
        Self {
            msgs_per_sec: events as f64 / elapsed.as_secs_f64(),
            p50: at(50),
            p99: at(99),
            cpu_per_msg: per_msg(cpu),
            broker_per_msg: broker.map(per_msg),
        }
    }
}

/// CPU time of the broker when it runs on this machine: the clock ticks of every `beam.smp`
/// process. Coarse (10 ms), but a round costs the broker seconds.
fn broker_cpu() -> Option<Duration> {
    let mut ticks = 0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let is_broker =
            std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == "beam.smp");
        if !is_broker {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let Some((_, after_name)) = stat.rsplit_once(')') else {
            continue;
        };
        // utime and stime, fields 14 and 15.
        ticks += after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|field| field.parse::<u64>().ok())
            .sum::<u64>();
        found = true;
    }
    found.then(|| Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Runs a round: arms `sink`, starts `publish` on a task of its own, and waits until the
/// handler has seen every event and the publishing task has every confirm.
async fn measure(
    sink: &Sink,
    first_id: u64,
    events: u64,
    publish: impl FnOnce() -> JoinHandle<Result<(), BoxError>>,
) -> Result<Measurement, BoxError> {
    sink.arm(first_id, events);
    let broker = broker_cpu();
    let cpu = CpuClock::now()?;
    let started = Instant::now();
    let publishing = publish();
    let handled = sink.done.notified();
    tokio::time::timeout(Duration::from_secs(120), async {
        handled.await;
        publishing.await?
    })
    .await
    .map_err(|_| "the round did not finish within 2 minutes")??;
    let elapsed = started.elapsed();
    let cpu = cpu.until(&CpuClock::now()?);
    let broker = broker
        .zip(broker_cpu())
        .map(|(before, after)| after.saturating_sub(before));
    Ok(Measurement::new(
        events,
        elapsed,
        cpu,
        broker,
        &sink.latencies(events)?,
    ))
}

/// Publishes `events` through `publish`, with `WINDOW` publishes awaiting their confirm.
async fn publish_windowed<F, E>(
    events: Vec<OrderPlaced>,
    publish: impl Fn(OrderPlaced) -> F,
) -> Result<(), BoxError>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    let mut in_flight: FuturesUnordered<F> = FuturesUnordered::new();
    for event in events {
        if in_flight.len() >= WINDOW {
            in_flight
                .next()
                .await
                .ok_or("no publish in flight")?
                .map_err(Into::into)?;
        }
        in_flight.push(publish(event));
    }
    while let Some(confirmed) = in_flight.next().await {
        confirmed.map_err(Into::into)?;
    }
    Ok(())
}

/// Plain lapin: a publishing connection with one confirm channel, and a consuming connection.
struct Lapin {
    url: String,
    publishing: Connection,
    consuming: Connection,
    channel: Channel,
    exchange: ShortString,
    queue: String,
    sink: Arc<Sink>,
    consumer: JoinHandle<()>,
    /// Sends choreo's envelope with each event.
    envelope: bool,
}

impl Lapin {
    async fn start(
        url: &str,
        name: &str,
        queue_type: QueueType,
        envelope: bool,
    ) -> Result<Self, BoxError> {
        let side = if envelope { "lapin-env" } else { "lapin" };
        let connect = |role: &str| {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("{name} {side} ({role})").into());
            Connection::connect(url, properties)
        };
        let publishing = connect("publish").await?;
        let consuming = connect("consume").await?;
        let exchange = format!("{name}.{side}.orders");
        let queue = format!("{name}.{side}");

        let setup = consuming.create_channel().await?;
        setup
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(queue_type.as_str())),
        );
        setup
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        setup
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        setup.close(200, "declared".into()).await?;

        let sink = Sink::new(EVENTS.max(WARM_UP_EVENTS));
        let consumer = consuming.create_channel().await?;
        consumer
            .basic_qos(PREFETCH, BasicQosOptions { global: false })
            .await?;
        let deliveries = consumer
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = tokio::spawn(consume(deliveries, Arc::clone(&sink)));

        let channel = publishing.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            url: url.to_owned(),
            publishing,
            consuming,
            channel,
            exchange: exchange.into(),
            queue,
            sink,
            consumer,
            envelope,
        })
    }

    async fn round(&self, events: Vec<OrderPlaced>) -> Result<Measurement, BoxError> {
        let (first, count) = (events[0].order_id, events.len() as u64);
        let channel = self.channel.clone();
        let exchange = self.exchange.clone();
        let envelope = self.envelope;
        measure(&self.sink, first, count, move || {
            tokio::spawn(async move {
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2);
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                let source: Arc<str> = "orders-api".into();
                let publish = |mut event: OrderPlaced| {
                    let (channel, exchange, properties) = (&channel, &exchange, &properties);
                    let source = &source;
                    async move {
                        event.sent_at_ns = now_ns();
                        let (message, plain);
                        let (body, properties): (&[u8], _) = if envelope {
                            let mut encoded = choreo::Message::encode(&event, source.clone())?;
                            encoded.meta.trace = Some(choreo::trace::TraceContext::root());
                            let properties = choreo_amqp::envelope_properties(&encoded);
                            message = encoded;
                            (&message.body, properties)
                        } else {
                            plain = serde_json::to_vec(&event)?;
                            (&plain, properties.clone())
                        };
                        let confirm = channel
                            .basic_publish(
                                exchange.clone(),
                                ROUTING_KEY.into(),
                                options,
                                body,
                                properties,
                            )
                            .await?;
                        match confirm.await? {
                            Confirmation::Ack(None) => Ok::<_, BoxError>(()),
                            other => Err(format!("publish not confirmed: {other:?}").into()),
                        }
                    }
                };
                publish_windowed(events, publish).await
            })
        })
        .await
    }

    /// Deletes the queue and exchange on a connection of its own: after a failed round the
    /// broker may have closed the others.
    async fn stop(self) -> Result<(), BoxError> {
        self.consumer.abort();
        let _ = self.publishing.close(200, "done".into()).await;
        let _ = self.consuming.close(200, "done".into()).await;
        let teardown = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let channel = teardown.create_channel().await?;
        channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        channel
            .exchange_delete(self.exchange.clone(), ExchangeDeleteOptions::default())
            .await?;
        teardown.close(200, "done".into()).await?;
        Ok(())
    }
}

/// The lapin consumer: decode, handle, acknowledge, with acknowledgements awaited concurrently.
async fn consume(mut deliveries: lapin::Consumer, sink: Arc<Sink>) {
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            delivery = deliveries.next() => {
                let Some(Ok(delivery)) = delivery else { break };
                match serde_json::from_slice::<OrderPlaced>(&delivery.data) {
                    Ok(order) => sink.record(&order),
                    Err(error) => eprintln!("lapin consumer: undecodable body: {error}"),
                }
                let acker = delivery.acker;
                acks.push(async move { acker.ack(BasicAckOptions::default()).await });
            }
            Some(acked) = acks.next(), if !acks.is_empty() => {
                if let Err(error) = acked {
                    eprintln!("lapin consumer: acknowledging failed: {error}");
                }
            }
        }
    }
}

/// choreo: a running service and a publisher on its transport.
struct Choreo {
    transport: AmqpTransport,
    publisher: Publisher<AmqpTransport>,
    topology: Topology,
    sink: Arc<Sink>,
    service: RunningService,
}

impl Choreo {
    async fn start(url: &str, name: &str, queue_type: QueueType) -> Result<Self, BoxError> {
        let config = AmqpConfig::new(url)
            .queue_type(queue_type)
            .exchange_prefix(format!("{name}.choreo."))
            .connection_name(format!("{name} choreo"));
        let transport = AmqpTransport::connect(config).await?;
        let sink = Sink::new(EVENTS.max(WARM_UP_EVENTS));
        let service = Service::new(name)
            .concurrency(usize::from(PREFETCH))
            .state(Arc::clone(&sink))
            .handler(record_order);
        let topology = service.topology()?;
        let service = service.start(&transport).await?;
        Ok(Self {
            publisher: transport.publisher("orders-api"),
            transport,
            topology,
            sink,
            service,
        })
    }

    async fn round(&self, events: Vec<OrderPlaced>) -> Result<Measurement, BoxError> {
        let (first, count) = (events[0].order_id, events.len() as u64);
        let publisher = self.publisher.clone();
        measure(&self.sink, first, count, move || {
            tokio::spawn(async move {
                let publish = |mut event: OrderPlaced| {
                    let publisher = &publisher;
                    async move {
                        event.sent_at_ns = now_ns();
                        publisher.publish(&event).await.map(drop)
                    }
                };
                publish_windowed(events, publish).await
            })
        })
        .await
    }

    /// Stops the service and deletes its queues and exchanges, even when the service
    /// stopped badly; returns the first error.
    async fn stop(self) -> Result<(), BoxError> {
        let stopped = self.service.shutdown().await;
        let mut deleted = self.transport.delete_queues(&self.topology).await;
        for domain in &self.topology.exchanges {
            let exchange = self.transport.delete_exchange(domain).await;
            deleted = deleted.and(exchange);
        }
        self.transport.close().await;
        stopped?;
        Ok(deleted?)
    }
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

/// All sides' figures for one round.
struct Row {
    lapin: Measurement,
    enveloped: Measurement,
    choreo: Measurement,
}

impl Row {
    fn throughput_ratio(&self) -> f64 {
        self.choreo.msgs_per_sec / self.lapin.msgs_per_sec
    }

    fn cpu_ratio(&self) -> f64 {
        self.choreo.cpu_per_msg.as_secs_f64() / self.lapin.cpu_per_msg.as_secs_f64()
    }

    fn enveloped_throughput_ratio(&self) -> f64 {
        self.choreo.msgs_per_sec / self.enveloped.msgs_per_sec
    }

    fn enveloped_cpu_ratio(&self) -> f64 {
        self.choreo.cpu_per_msg.as_secs_f64() / self.enveloped.cpu_per_msg.as_secs_f64()
    }
}

fn print_header() {
    println!(
        "{:>6}  {:>16}  {:>9} {:>8} {:>8} {:>10} {:>10}",
        "round", "side", "msgs/s", "p50 ms", "p99 ms", "client µs", "broker µs"
    );
}

fn print_side(label: &str, side: &str, m: &Measurement) {
    let broker = m.broker_per_msg.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1}", b.as_secs_f64() * 1e6),
    );
    println!(
        "{label:>6}  {side:>16}  {:>9.0} {:>8.2} {:>8.2} {:>10.1} {broker:>10}",
        m.msgs_per_sec,
        m.p50.as_secs_f64() * 1e3,
        m.p99.as_secs_f64() * 1e3,
        m.cpu_per_msg.as_secs_f64() * 1e6,
    );
}

/// Throughput and client CPU per message, choreo over another side.
fn print_ratios(over: &str, throughput: f64, cpu: f64) {
    println!(
        "{:>6}  {over:>16}  {throughput:>9.2} {:>8} {:>8} {cpu:>10.2}",
        "", "", ""
    );
}

fn print_row(label: &str, row: &Row) {
    print_side(label, "lapin", &row.lapin);
    print_side("", "lapin+env", &row.enveloped);
    print_side("", "choreo", &row.choreo);
    print_ratios("choreo/lapin", row.throughput_ratio(), row.cpu_ratio());
    print_ratios(
        "choreo/lapin+env",
        row.enveloped_throughput_ratio(),
        row.enveloped_cpu_ratio(),
    );
}

/// Settings read from the environment.
struct Settings {
    url: String,
    events: u64,
    rounds: usize,
    queues: Vec<QueueType>,
}

impl Settings {
    fn from_env() -> Result<Self, BoxError> {
        let number = |name: &str, default: u64| -> Result<u64, BoxError> {
            match std::env::var(name) {
                Ok(value) => Ok(value.parse().map_err(|e| format!("{name}: {e}"))?),
                Err(_) => Ok(default),
            }
        };
        let queues = match std::env::var("AMQP_BENCH_QUEUES") {
            Ok(list) => list
                .split(',')
                .map(|q| match q.trim() {
                    "classic" => Ok(QueueType::Classic),
                    "quorum" => Ok(QueueType::Quorum),
                    other => Err(format!("AMQP_BENCH_QUEUES: unknown queue type `{other}`")),
                })
                .collect::<Result<_, _>>()?,
            Err(_) => vec![QueueType::Classic, QueueType::Quorum],
        };
        Ok(Self {
            url: std::env::var(choreo_amqp::URL_ENV)
                .unwrap_or_else(|_| choreo_amqp::DEFAULT_URL.to_owned()),
            events: number("AMQP_BENCH_EVENTS", EVENTS)?.clamp(1, EVENTS),
            rounds: usize::try_from(number("AMQP_BENCH_ROUNDS", ROUNDS as u64)?)?.max(1),
            queues,
        })
    }
}

/// The sides, for [`compare`].
struct Sides<'a> {
    lapin: &'a Lapin,
    enveloped: &'a Lapin,
    choreo: &'a Choreo,
}

impl Sides<'_> {
    /// Side `side` (0: lapin, 1: lapin+env, 2: choreo) runs a round of `events` events.
    async fn round(
        &self,
        side: usize,
        events: u64,
        take_ids: &mut impl FnMut(u64) -> u64,
    ) -> Result<Measurement, BoxError> {
        let batch = batch(take_ids(events), events);
        match side {
            0 => self.lapin.round(batch).await,
            1 => self.enveloped.round(batch).await,
            _ => self.choreo.round(batch).await,
        }
    }
}

/// Warm-up and measured rounds on one queue type.
async fn compare(
    settings: &Settings,
    sides: &Sides<'_>,
    take_ids: &mut impl FnMut(u64) -> u64,
) -> Result<Vec<Row>, BoxError> {
    let warm_up = WARM_UP_EVENTS.min(settings.events);
    for side in 0..3 {
        sides.round(side, warm_up, take_ids).await?;
    }

    print_header();
    let mut rows = Vec::with_capacity(settings.rounds);
    for round in 1..=settings.rounds {
        // Each round starts with another side.
        let mut measured = [None; 3];
        for turn in 0..3 {
            let side = (round + turn) % 3;
            measured[side] = Some(sides.round(side, settings.events, take_ids).await?);
        }
        let [Some(lapin), Some(enveloped), Some(choreo)] = measured else {
            unreachable!("every side ran");
        };
        let row = Row {
            lapin,
            enveloped,
            choreo,
        };
        print_row(&round.to_string(), &row);
        rows.push(row);
    }
    Ok(rows)
}

/// Medians of a queue type's rounds, and the targets.
fn summarize(queue_type: QueueType, rows: &[Row]) -> bool {
    let column = |f: &dyn Fn(&Row) -> f64| median(&mut rows.iter().map(f).collect::<Vec<_>>());
    let side = |pick: fn(&Row) -> &Measurement| Measurement {
        msgs_per_sec: column(&|r| pick(r).msgs_per_sec),
        p50: Duration::from_secs_f64(column(&|r| pick(r).p50.as_secs_f64())),
        p99: Duration::from_secs_f64(column(&|r| pick(r).p99.as_secs_f64())),
        cpu_per_msg: Duration::from_secs_f64(column(&|r| pick(r).cpu_per_msg.as_secs_f64())),
        broker_per_msg: rows
            .iter()
            .all(|r| pick(r).broker_per_msg.is_some())
            .then(|| {
                Duration::from_secs_f64(column(&|r| {
                    pick(r).broker_per_msg.map_or(0.0, |b| b.as_secs_f64())
                }))
            }),
    };
    print_side("median", "lapin", &side(|r| &r.lapin));
    print_side("", "lapin+env", &side(|r| &r.enveloped));
    print_side("", "choreo", &side(|r| &r.choreo));
    let throughput = column(&|r| r.throughput_ratio());
    let lowest = rows
        .iter()
        .map(Row::throughput_ratio)
        .fold(f64::INFINITY, f64::min);
    let cpu = column(&|r| r.cpu_ratio());
    print_ratios("choreo/lapin", throughput, cpu);
    let enveloped_throughput = column(&|r| r.enveloped_throughput_ratio());
    let enveloped_cpu = column(&|r| r.enveloped_cpu_ratio());
    print_ratios("choreo/lapin+env", enveloped_throughput, enveloped_cpu);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let throughput_met = throughput >= 1.0 && lowest >= 0.95;
    let cpu_met = cpu <= 1.15;
    println!();
    println!(
        "{}: throughput choreo/lapin >= 1.00 (median), no round < 0.95: {} (median {throughput:.2}, lowest {lowest:.2})",
        queue_type.as_str(),
        verdict(throughput_met)
    );
    println!(
        "{}: client CPU per message choreo/lapin <= 1.15: {} (median {cpu:.2})",
        queue_type.as_str(),
        verdict(cpu_met)
    );
    println!(
        "{}: for reference, against lapin sending choreo's envelope: throughput {enveloped_throughput:.2}, client CPU {enveloped_cpu:.2}",
        queue_type.as_str(),
    );
    throughput_met && cpu_met
}

async fn run() -> Result<(), BoxError> {
    let settings = Settings::from_env()?;
    let run = format!("amqp-bench-{:x}", fastrand::u64(..) & 0xFFFF_FFFF_FFFF);
    let body = serde_json::to_vec(&OrderPlaced {
        sent_at_ns: now_ns(),
        ..OrderPlaced::sample(1_000_000)
    })?;
    println!(
        "one handler, {}-byte persistent JSON event, {WINDOW} publishes in flight, prefetch \
         {PREFETCH}, {} rounds of {} events per side after a warm-up of {}, tokio \
         multi-thread runtime with 2 workers; CPU time per message of the client (this \
         process, all threads) and of the broker (when it runs here)",
        body.len(),
        settings.rounds,
        settings.events,
        WARM_UP_EVENTS.min(settings.events),
    );

    // Ids never repeat: every choreo event is a new idempotency key.
    let mut next_id = 1;
    let mut take_ids = |events: u64| {
        let first = next_id;
        next_id += events;
        first
    };
    let mut all_met = true;
    for &queue_type in &settings.queues {
        let name = format!("{run}-{}", queue_type.as_str());
        println!();
        println!("== {} queues ({name})", queue_type.as_str());
        let lapin = Lapin::start(&settings.url, &name, queue_type, false).await?;
        let enveloped = match Lapin::start(&settings.url, &name, queue_type, true).await {
            Ok(enveloped) => enveloped,
            Err(error) => {
                lapin.stop().await?;
                return Err(error);
            }
        };
        let choreo = match Choreo::start(&settings.url, &name, queue_type).await {
            Ok(choreo) => choreo,
            Err(error) => {
                lapin.stop().await?;
                enveloped.stop().await?;
                return Err(error);
            }
        };
        let sides = Sides {
            lapin: &lapin,
            enveloped: &enveloped,
            choreo: &choreo,
        };
        let rows = compare(&settings, &sides, &mut take_ids).await;
        // Clean up whatever happened.
        let stopped = [
            choreo.stop().await,
            enveloped.stop().await,
            lapin.stop().await,
        ];
        let rows = rows?;
        for stopped in stopped {
            stopped?;
        }
        all_met &= summarize(queue_type, &rows);
    }
    println!();
    println!("all targets: {}", if all_met { "met" } else { "NOT met" });
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking threads that outlive the run keep per-thread CPU accounting exact.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()?;
    epoch();
    // On a worker, not on the main thread: both sides get the same 2 workers.
    runtime.block_on(async { tokio::spawn(run()).await? })
}
