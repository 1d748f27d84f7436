//! Recovery on a real RabbitMQ: connections closed by the broker in the middle of a stream,
//! and the broker application stopped and started again, five times.
//!
//! These tests disturb every connection on the broker, so they run one at a time, in a
//! test binary of their own.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use choreo::{HandlerError, RetryPolicy, RunningService, Service, State, handler};
use support::{Broker, Effects, OrderPlaced, eventually, order};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[handler(name = "apply")]
async fn apply(order: OrderPlaced, State(effects): State<Effects>) -> Result<(), HandlerError> {
    effects.apply(order.order_id);
    Ok(())
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed next to the broker");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts the broker application again and waits until its quorum queues have settled, so
/// that deleting them at clean-up cannot race their start (see `heal_dead_lettering`).
fn start_app() {
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    std::thread::sleep(Duration::from_secs(3));
}

/// Publishes orders `ids` with up to 64 publishes in flight; returns how many failed.
async fn publish_all(broker: &Broker, ids: std::ops::Range<u64>, failures: Arc<AtomicU64>) {
    let publisher = broker.transport.publisher("test");
    let window = Arc::new(Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for id in ids {
        let permit = Arc::clone(&window).acquire_owned().await.unwrap();
        let publisher = publisher.clone();
        let failures = Arc::clone(&failures);
        tasks.spawn(async move {
            if let Err(error) = publisher.publish(&order(id)).await {
                eprintln!("publish {id} failed: {error}");
                failures.fetch_add(1, Ordering::SeqCst);
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Ends a disrupted stream of `events` events: lets redeliveries and deferred duplicates come
/// back and be absorbed, stops the service, and checks that no publish error reached the
/// caller, that each event took effect exactly once and that every queue is empty.
async fn finish_applied_once(
    broker: Broker,
    running: RunningService,
    failures: &AtomicU64,
    effects: &Effects,
    events: u64,
) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.shutdown().await.unwrap();

    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no publish error reached the caller"
    );
    let repeated: Vec<u64> = (0..events).filter(|id| effects.of(*id) != 1).collect();
    assert!(
        repeated.is_empty(),
        "applied more or less than once: {repeated:?}"
    );
    assert_drained(&broker).await;
    broker.clean_up().await;
    support::heal_dead_lettering();
}

async fn assert_drained(broker: &Broker) {
    let queue = broker.queue("apply");
    let tiers = ["", ".retry.1s", ".retry.10s", ".retry.1m", ".poison"];
    for tier in tiers {
        let name = format!("{queue}{tier}");
        assert_eq!(broker.ready(&name).await, 0, "`{name}` is empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_mid_stream_lose_nothing_and_apply_each_event_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    const EVENTS: u64 = 5_000;
    let mut broker = Broker::new().await;
    let effects = Effects::default();
    let service = Service::new(broker.service.clone())
        .handler(apply)
        .state(effects.clone());
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();

    let failures = Arc::new(AtomicU64::new(0));
    let stream = {
        let failures = Arc::clone(&failures);
        let broker = &broker;
        async move { publish_all(broker, 0..EVENTS, failures).await }
    };
    let disrupt = async {
        for at in [EVENTS / 3, 2 * EVENTS / 3] {
            assert!(
                eventually(Duration::from_secs(120), || effects.total() as u64 >= at).await,
                "stalled before {at} events"
            );
            rabbitmqctl(&["close_all_connections", "choreo test: closed mid-stream"]);
        }
    };
    let ((), ()) = tokio::time::timeout(Duration::from_secs(300), async {
        tokio::join!(stream, disrupt)
    })
    .await
    .expect("no hang");

    assert!(
        eventually(Duration::from_secs(120), || effects.distinct() as u64
            == EVENTS)
        .await,
        "only {} of {EVENTS} handled",
        effects.distinct()
    );
    finish_applied_once(broker, running, &failures, &effects, EVENTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_through_a_longer_outage_fails_clearly_after_its_bound() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut broker = Broker::with(|c| c.publish_timeout(Duration::from_secs(2))).await;
    let service = Service::new(broker.service.clone())
        .handler(apply)
        .state(Effects::default());
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();
    let publisher = broker.transport.publisher("test");
    publisher.publish(&order(1)).await.unwrap();

    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let result = publisher.publish(&order(2)).await;
    let waited = started.elapsed();
    tokio::task::spawn_blocking(start_app).await.unwrap();

    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("not confirmed within"),
        "a clear error naming the bound: {error}"
    );
    assert!(!error.contains("guest:guest"), "no password: {error}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );
    // Once the broker is back, the same publisher works again.
    publisher.publish(&order(3)).await.unwrap();
    running.shutdown().await.unwrap();
    broker.clean_up().await;
    support::heal_dead_lettering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_neither_hang_nor_fail_publishes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut broker = Broker::with(|c| c.publish_timeout(Duration::from_secs(90))).await;
    let effects = Effects::default();
    let service = Service::new(broker.service.clone())
        .handler(apply)
        .state(effects.clone())
        .retry_policy(RetryPolicy::default());
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();

    let failures = Arc::new(AtomicU64::new(0));
    let mut next = 0;
    for restart in 1..=5 {
        // Publish through the outage: the stream starts before the broker stops and ends
        // after it is back.
        let start = next;
        next += 300;
        let stream = publish_all(&broker, start..next, Arc::clone(&failures));
        let outage = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tokio::task::spawn_blocking(|| {
                rabbitmqctl(&["stop_app"]);
                std::thread::sleep(Duration::from_secs(5));
                start_app();
            })
            .await
            .unwrap();
        };
        tokio::time::timeout(Duration::from_secs(180), async {
            tokio::join!(stream, outage)
        })
        .await
        .unwrap_or_else(|_| panic!("restart {restart} hung"));
        assert!(
            eventually(Duration::from_secs(120), || effects.distinct() as u64
                == next)
            .await,
            "restart {restart}: {} of {next} handled",
            effects.distinct()
        );
    }
    finish_applied_once(broker, running, &failures, &effects, next).await;
}
