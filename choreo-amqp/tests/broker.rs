//! Services on a real RabbitMQ: the happy path, retry tiers, poison metadata, bad input,
//! deduplication, topology conflicts, unroutable events and graceful shutdown.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use choreo::envelope::headers;
use choreo::{
    Context, HandlerError, Observation, Outcome, PublishOptions, RetryPolicy, Service, State,
    handler,
};
use choreo_amqp::{AmqpConfig, AmqpError, AmqpTransport, QueueType};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use support::{Broker, Effects, OrderPlaced, OrderShipped, PaymentCaptured, eventually, order};

const WAIT: Duration = Duration::from_secs(30);

#[handler(name = "charge", emits(PaymentCaptured))]
async fn charge(
    order: OrderPlaced,
    ctx: Context,
    State(effects): State<Effects>,
) -> Result<(), HandlerError> {
    effects.apply(order.order_id);
    ctx.publish(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

/// Records what reached the follow-up consumer: key, correlation and causation ids.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenEvent>>>);

/// Order id, correlation id and causation id of a follow-up event.
type SeenEvent = (u64, uuid::Uuid, Option<uuid::Uuid>);

#[handler(name = "notify")]
async fn notify(captured: PaymentCaptured, ctx: Context, State(seen): State<Seen>) {
    seen.0
        .lock()
        .unwrap()
        .push((captured.order_id, ctx.correlation_id(), ctx.causation_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_with_follow_up_events() {
    let mut broker = Broker::new().await;
    let effects = Effects::default();
    let seen = Seen::default();
    let billing = Service::new(broker.service.clone())
        .handler(charge)
        .handler(notify)
        .state(effects.clone())
        .state(seen.clone());
    broker.track(&billing);
    let running = billing.start(&broker.transport).await.unwrap();

    let publisher = broker.transport.publisher("test");
    let mut ids = Vec::new();
    for id in 0..200 {
        ids.push(publisher.publish(&order(id)).await.unwrap());
    }
    assert!(eventually(WAIT, || seen.0.lock().unwrap().len() == 200).await);
    running.shutdown().await.unwrap();

    assert_eq!(effects.distinct(), 200);
    assert_eq!(effects.total(), 200);
    let seen = seen.0.lock().unwrap().clone();
    for (order_id, correlation, causation) in seen.iter() {
        let published = ids[*order_id as usize];
        assert_eq!(
            *correlation, published,
            "the flow keeps the first message's id"
        );
        assert_eq!(*causation, Some(published), "caused by the order's message");
    }
    for queue in ["charge", "notify"] {
        let queue = broker.queue(queue);
        assert_eq!(broker.ready(&queue).await, 0, "{queue} drained");
        assert_eq!(broker.ready(&format!("{queue}.poison")).await, 0);
    }
    broker.clean_up().await;
}

#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<Run>>>);

/// When a run happened, the attempt it was, and the attempt and retry-tier headers it saw.
type Run = (Instant, u32, u32, u32);

/// Fails the first `fail` runs, recording when each run happened and what headers it saw.
#[handler(name = "flaky")]
async fn flaky(
    order: OrderPlaced,
    ctx: Context,
    State(runs): State<Runs>,
    State(fail): State<u32>,
) -> Result<(), HandlerError> {
    let _ = order;
    let mut runs = runs.0.lock().unwrap();
    runs.push((
        Instant::now(),
        ctx.attempt(),
        ctx.meta().attempt,
        ctx.meta().retry_tier,
    ));
    if runs.len() as u32 <= fail {
        return Err(HandlerError::msg("not yet"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_tiers_wait_their_delay_and_count_attempts_in_headers() {
    let mut broker = Broker::new().await;
    let runs = Runs::default();
    let delays = [Duration::from_millis(300), Duration::from_millis(600)];
    let service = Service::new(broker.service.clone())
        .handler(flaky)
        .state(runs.clone())
        .state(2u32)
        .retry_policy(RetryPolicy::default().immediate(0).delays(delays));
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();

    broker
        .transport
        .publisher("test")
        .publish(&order(1))
        .await
        .unwrap();
    assert!(eventually(WAIT, || runs.0.lock().unwrap().len() == 3).await);
    running.shutdown().await.unwrap();

    let runs = runs.0.lock().unwrap().clone();
    // (attempt as the handler sees it, attempt header, retry-tier header)
    let seen: Vec<(u32, u32, u32)> = runs.iter().map(|r| (r.1, r.2, r.3)).collect();
    assert_eq!(seen, [(1, 0, 0), (2, 1, 1), (3, 2, 2)]);
    for (i, delay) in delays.iter().enumerate() {
        let waited = runs[i + 1].0 - runs[i].0;
        assert!(
            waited >= *delay,
            "tier {i} waited {waited:?}, less than {delay:?}"
        );
        assert!(
            waited < *delay + Duration::from_secs(5),
            "tier {i} waited {waited:?}"
        );
    }
    let queue = broker.queue("flaky");
    for tier in ["retry.300ms", "retry.600ms", "poison"] {
        assert_eq!(broker.ready(&format!("{queue}.{tier}")).await, 0);
    }
    broker.clean_up().await;
}

#[handler(name = "reject")]
async fn reject(order: OrderPlaced) -> Result<(), HandlerError> {
    Err(HandlerError::permanent_msg(format!(
        "order {} cannot be charged",
        order.order_id
    )))
}

fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_messages_keep_body_and_headers_and_gain_failure_headers() {
    let mut broker = Broker::new().await;
    let service = Service::new(broker.service.clone()).handler(reject);
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();

    let id = broker
        .transport
        .publisher("test")
        .publish_with(
            &order(7),
            PublishOptions::default().header(
                headers::TRACEPARENT,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        )
        .await
        .unwrap();
    let poison = format!("{}.poison", broker.queue("reject"));
    let mut poisoned = Vec::new();
    for _ in 0..500 {
        poisoned = broker.drain(&poison).await;
        if !poisoned.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await.unwrap();

    assert_eq!(poisoned.len(), 1);
    let message = &poisoned[0].delivery;
    assert_eq!(
        message.data,
        serde_json::to_vec(&order(7)).unwrap(),
        "body byte for byte"
    );
    let props = &message.properties;
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        id.to_string()
    );
    assert_eq!(
        props.kind().as_ref().unwrap().as_str(),
        "orders.order-placed"
    );
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(header(props, headers::ID).unwrap(), id.to_string());
    assert_eq!(header(props, headers::TYPE).unwrap(), "orders.order-placed");
    assert_eq!(header(props, headers::SOURCE).unwrap(), "test");
    assert_eq!(header(props, headers::SPEC_VERSION).unwrap(), "1.0");
    assert_eq!(header(props, headers::KEY).unwrap(), "7");
    assert!(header(props, headers::TRACEPARENT).is_some());
    use headers::failure as f;
    assert_eq!(header(props, f::HANDLER).unwrap(), broker.queue("reject"));
    assert_eq!(header(props, f::KIND).unwrap(), "permanent");
    assert_eq!(
        header(props, f::MESSAGE).unwrap(),
        "order 7 cannot be charged"
    );
    assert_eq!(header(props, f::ATTEMPTS).unwrap(), "1");
    assert_eq!(
        header(props, f::EXCHANGE).unwrap(),
        broker.exchange("orders")
    );
    assert_eq!(
        header(props, f::ROUTING_KEY).unwrap(),
        "orders.order-placed.v1"
    );
    for time in [f::FIRST_AT, f::LAST_AT] {
        let text = header(props, time).unwrap();
        assert!(
            choreo::envelope::parse_rfc3339(&text).is_some(),
            "{time}: {text}"
        );
    }
    broker.clean_up().await;
}

#[handler(name = "count")]
async fn count(order: OrderPlaced, State(effects): State<Effects>) -> Result<(), HandlerError> {
    if order.order_id == 666 && effects.apply(666) == 1 {
        panic!("first run of order 666 panics");
    }
    if order.order_id != 666 {
        effects.apply(order.order_id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_row_behaves_as_designed() {
    // The client's own publish limit is below the too-large message: moving it to the
    // poison queue must not be held to that limit.
    let mut broker = Broker::with(|c| c.max_body_size(512)).await;
    let effects = Effects::default();
    let outcomes: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = Arc::clone(&outcomes);
    let service = Service::new(broker.service.clone())
        .handler(count)
        .state(effects.clone())
        .max_body_size(512)
        .retry_policy(RetryPolicy::default().pause(Duration::from_millis(1)))
        .observe(move |o: &Observation<'_>| {
            if let Outcome::Poisoned(failure) = &o.outcome {
                recorded
                    .lock()
                    .unwrap()
                    .push(failure.kind.as_str().to_owned());
            }
        });
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();
    let queue = broker.queue("count");
    let exchange = broker.exchange("orders");
    let typed = |version: u32| {
        let mut table = FieldTable::default();
        table.insert("choreo-version".into(), AMQPValue::LongUInt(version));
        BasicProperties::default()
            .with_type("orders.order-placed".into())
            .with_headers(table)
    };

    // Not JSON, and JSON of the wrong shape: decode.
    broker
        .publish_raw(&exchange, "orders.order-placed.v1", typed(1), b"{not json")
        .await;
    broker
        .publish_raw(
            &exchange,
            "orders.order-placed.v1",
            typed(1),
            br#"{"order_id":"x"}"#,
        )
        .await;
    // A version the handler cannot read, sent straight to its queue: unknown-version.
    broker
        .publish_raw("", &queue, typed(9), br#"{"order_id":1,"total_cents":1}"#)
        .await;
    // No metadata at all but a routing key that names the event: handled with defaults.
    broker
        .publish_raw(
            &exchange,
            "orders.order-placed.v1",
            BasicProperties::default(),
            br#"{"order_id":2,"total_cents":1}"#,
        )
        .await;
    // Nothing names the event: malformed.
    broker
        .publish_raw("", &queue, BasicProperties::default(), br#"{"order_id":3}"#)
        .await;
    // Over the consumer's size limit: too-large.
    let large = format!(
        r#"{{"order_id":4,"total_cents":1,"pad":"{}"}}"#,
        "x".repeat(600)
    );
    broker
        .publish_raw(
            &exchange,
            "orders.order-placed.v1",
            typed(1),
            large.as_bytes(),
        )
        .await;
    // A handler that panics on its first run: retried, and the consumer keeps going.
    let publisher = broker.transport.publisher("test");
    publisher.publish(&order(666)).await.unwrap();
    publisher.publish(&order(5)).await.unwrap();

    assert!(
        eventually(WAIT, || outcomes.lock().unwrap().len() == 5
            && effects.total() == 4)
        .await
    );
    running.shutdown().await.unwrap();

    let mut kinds = outcomes.lock().unwrap().clone();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "decode",
            "decode",
            "malformed",
            "too-large",
            "unknown-version"
        ]
    );
    assert_eq!(
        effects.of(2),
        1,
        "missing metadata got defaults and was handled"
    );
    assert_eq!(effects.of(666), 2, "panicked once, then handled");
    assert_eq!(effects.of(5), 1);
    let poisoned = broker.drain(&format!("{queue}.poison")).await;
    assert_eq!(poisoned.len(), 5);
    let malformed = poisoned
        .iter()
        .find(|m| {
            header(&m.delivery.properties, headers::failure::KIND).as_deref() == Some("malformed")
        })
        .unwrap();
    assert_eq!(
        malformed.delivery.data, br#"{"order_id":3}"#,
        "kept as it came"
    );
    assert_eq!(broker.ready(&queue).await, 0);
    broker.clean_up().await;
}

#[tokio::test]
async fn a_broker_that_cannot_be_reached_is_a_clear_error() {
    let error = AmqpTransport::connect(AmqpConfig::new("amqp://app:s3cret@127.0.0.1:1/%2f"))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, AmqpError::Connect { .. }));
    assert!(
        text.starts_with("cannot connect to amqp://app:***@127.0.0.1:1/%2f: "),
        "{text}"
    );
    assert!(!text.contains("s3cret"));

    let url = support::url().replace("guest:guest", "guest:wrong-password");
    let error = AmqpTransport::connect(AmqpConfig::new(url))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("guest:***@"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");

    let error = AmqpTransport::connect(AmqpConfig::new("http://localhost"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AmqpError::Config { setting: "url", .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_handled_once() {
    let mut broker = Broker::new().await;
    let effects = Effects::default();
    let service = Service::new(broker.service.clone())
        .handler(count)
        .state(effects.clone());
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();

    let publisher = broker.transport.publisher("test");
    let id = publisher.publish(&order(10)).await.unwrap();
    for _ in 0..3 {
        publisher
            .publish_with(&order(10), PublishOptions::default().message_id(id))
            .await
            .unwrap();
    }
    // Same business key under a new message id: also a duplicate in effect.
    publisher.publish(&order(10)).await.unwrap();
    publisher.publish(&order(11)).await.unwrap();
    assert!(eventually(WAIT, || effects.of(11) == 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.shutdown().await.unwrap();

    assert_eq!(effects.of(10), 1);
    assert_eq!(broker.ready(&broker.queue("count")).await, 0);
    broker.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_exists_with_other_arguments_is_named_in_the_error() {
    let mut broker = Broker::with(|c| c.queue_type(QueueType::Quorum)).await;
    let service = Service::new(broker.service.clone()).handler(reject);
    broker.track(&service);
    let queue = broker.queue("reject");
    // Someone declared the queue as classic.
    let channel = broker.raw().await.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let error = service.start(&broker.transport).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "queue `{queue}` already exists with other arguments"
        )),
        "{text}"
    );
    assert!(text.contains("`x-"), "names the argument: {text}");
    broker.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_events_are_errors_for_the_publisher() {
    let mut broker = Broker::new().await;
    // The exchange exists (the service declares `orders`) but nothing is bound to this
    // event's routing key.
    let service = Service::new(broker.service.clone()).handler(reject);
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();
    let publisher = broker.transport.publisher("test");
    let error = publisher
        .publish(&PaymentCaptured { order_id: 1 })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("unroutable"), "{error}");

    // The routable one still goes through on the same publisher.
    publisher.publish(&order(1)).await.unwrap();
    running.shutdown().await.unwrap();
    broker.clean_up().await;
}

#[handler(name = "slow", concurrency = 4)]
async fn slow(order: OrderPlaced, State(effects): State<Effects>) {
    tokio::time::sleep(Duration::from_secs(10)).await;
    effects.apply(order.order_id);
}

#[handler(name = "slow", concurrency = 4)]
async fn quick(order: OrderPlaced, State(effects): State<Effects>) {
    effects.apply(order.order_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_in_flight_messages_to_the_broker() {
    let mut broker = Broker::new().await;
    let effects = Effects::default();
    let first = Service::new(broker.service.clone())
        .handler(slow)
        .state(effects.clone())
        .shutdown_grace(Duration::from_millis(200));
    broker.track(&first);
    let running = first.start(&broker.transport).await.unwrap();
    let publisher = broker.transport.publisher("test");
    for id in 0..10 {
        publisher.publish(&order(id)).await.unwrap();
    }
    let queue = broker.queue("slow");
    // Four in flight (the prefetch), six ready.
    let mut ready = 0;
    for _ in 0..200 {
        ready = broker.ready(&queue).await;
        if ready == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 6);
    running.shutdown().await.unwrap();
    assert_eq!(effects.total(), 0, "the slow handlers were stopped");
    let mut back = 0;
    for _ in 0..200 {
        back = broker.ready(&queue).await;
        if back == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(back, 10, "in-flight messages returned, none lost");

    // A new instance handles all ten.
    let second = Service::new(broker.service.clone())
        .handler(quick)
        .state(effects.clone());
    let running = second.start(&broker.transport).await.unwrap();
    assert!(eventually(WAIT, || effects.distinct() == 10).await);
    running.shutdown().await.unwrap();
    assert_eq!(effects.total(), 10);
    broker.clean_up().await;
}

/// Trace ids each hop saw, in order of arrival.
#[derive(Clone, Default)]
struct Traces(Arc<Mutex<Vec<(&'static str, u128)>>>);

#[handler(name = "capture", emits(PaymentCaptured))]
async fn capture(
    order: OrderPlaced,
    ctx: Context,
    State(traces): State<Traces>,
) -> Result<(), HandlerError> {
    traces
        .0
        .lock()
        .unwrap()
        .push(("capture", ctx.trace().trace_id));
    ctx.publish(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

#[handler(name = "ship", emits(OrderShipped))]
async fn ship(
    captured: PaymentCaptured,
    ctx: Context,
    State(traces): State<Traces>,
) -> Result<(), HandlerError> {
    traces
        .0
        .lock()
        .unwrap()
        .push(("ship", ctx.trace().trace_id));
    ctx.publish(&OrderShipped {
        order_id: captured.order_id,
    })?;
    Ok(())
}

#[handler(name = "announce")]
async fn announce(shipped: OrderShipped, ctx: Context, State(traces): State<Traces>) {
    let _ = shipped;
    traces
        .0
        .lock()
        .unwrap()
        .push(("announce", ctx.trace().trace_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_three_hops_and_health() {
    let mut broker = Broker::new().await;
    let traces = Traces::default();
    let mut running = Vec::new();
    for (suffix, service) in [
        (
            "billing",
            Service::new(format!("{}-billing", broker.service)).handler(capture),
        ),
        (
            "shipping",
            Service::new(format!("{}-shipping", broker.service)).handler(ship),
        ),
        (
            "mailer",
            Service::new(format!("{}-mailer", broker.service)).handler(announce),
        ),
    ] {
        let service = service.state(traces.clone());
        broker.track(&service);
        let started = service.start(&broker.transport).await.unwrap();
        assert!(started.health().ready, "{suffix} is ready");
        running.push(started);
    }

    let caller = choreo::trace::TraceContext::root();
    broker
        .transport
        .publisher("web")
        .publish_with(
            &order(1),
            PublishOptions::default().header(headers::TRACEPARENT, caller.to_string()),
        )
        .await
        .unwrap();
    assert!(eventually(WAIT, || traces.0.lock().unwrap().len() == 3).await);
    let seen = traces.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("capture", caller.trace_id),
            ("ship", caller.trace_id),
            ("announce", caller.trace_id)
        ]
    );

    let health = running[0].health();
    assert!(health.live && health.connected);
    broker.transport.close().await;
    let health = running[0].health();
    assert!(
        !health.connected && !health.ready,
        "a closed transport is not ready"
    );
    for service in running {
        service.shutdown().await.unwrap();
    }
    broker.clean_up().await;
}
