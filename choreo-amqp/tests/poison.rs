//! Poison queues on a real RabbitMQ: listed by kind, shown without loss, replayed to a fixed
//! handler, replayed by id, kind and time, dry runs, purges, and replays interrupted by a
//! closed connection, from within and by the broker.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use choreo::envelope::{Rfc3339, headers};
use choreo::transport::Transport;
use choreo::{Context, FailureKind, HandlerError, Service, State, handler};
use choreo_amqp::poison::{PoisonAdmin, REPLAY_COUNT, Selection};
use choreo_amqp::{AmqpConfig, AmqpError};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use support::{Broker, OrderPlaced, eventually, order, unique, url};

const WAIT: Duration = Duration::from_secs(30);

/// Whether the cause of the failures was fixed.
#[derive(Clone, Default)]
struct Fixed(Arc<AtomicBool>);

/// One run: order id, the run's attempt, the attempt header, the replay-count header.
type Run = (u64, u32, u32, Option<String>);

#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<Run>>>);

impl Runs {
    fn succeeded(&self, order_id: u64) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == order_id)
            .count()
    }
}

/// Odd orders fail permanently until the cause is fixed.
#[handler(name = "charge")]
async fn charge(
    order: OrderPlaced,
    ctx: Context,
    State(fixed): State<Fixed>,
    State(runs): State<Runs>,
) -> Result<(), HandlerError> {
    if order.order_id % 2 == 1 && !fixed.0.load(Ordering::SeqCst) {
        return Err(HandlerError::permanent_msg(format!(
            "order {} cannot be charged",
            order.order_id
        )));
    }
    runs.0.lock().unwrap().push((
        order.order_id,
        ctx.attempt(),
        ctx.meta().attempt,
        ctx.meta().headers.get(REPLAY_COUNT).map(str::to_owned),
    ));
    Ok(())
}

struct Setup {
    broker: Broker,
    admin: PoisonAdmin,
    poison: String,
    fixed: Fixed,
    runs: Runs,
    running: choreo::RunningService,
}

/// A service whose `charge` handler poisons odd orders; `orders` are published and `bad`
/// bodies that do not decode; returns once all the failures are in the poison queue.
async fn poisoned(orders: std::ops::Range<u64>, bad: usize) -> Setup {
    let mut broker = Broker::new().await;
    let fixed = Fixed::default();
    let runs = Runs::default();
    let service = Service::new(broker.service.clone())
        .handler(charge)
        .state(fixed.clone())
        .state(runs.clone());
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();
    let publisher = broker.transport.publisher("test");
    let expected = orders.clone().filter(|id| id % 2 == 1).count() + bad;
    for id in orders {
        publisher.publish(&order(id)).await.unwrap();
    }
    let exchange = broker.exchange("orders");
    for n in 0..bad {
        let mut table = FieldTable::default();
        table.insert(headers::VERSION.into(), AMQPValue::LongUInt(1));
        let properties = BasicProperties::default()
            .with_type("orders.order-placed".into())
            .with_message_id(bad_id(n).into())
            .with_headers(table);
        broker
            .publish_raw(
                &exchange,
                "orders.order-placed.v1",
                properties,
                format!(r#"{{"order_id":"not a number {n}"}}"#).as_bytes(),
            )
            .await;
    }
    let admin = admin().await;
    let poison = format!("{}.poison", broker.queue("charge"));
    let mut count = 0;
    for _ in 0..1500 {
        count = admin.count(&poison).await.unwrap();
        if count as usize == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count as usize, expected, "every failure poisoned");
    Setup {
        broker,
        admin,
        poison,
        fixed,
        runs,
        running,
    }
}

/// The message id of the `n`th body that does not decode.
fn bad_id(n: usize) -> String {
    format!("00000000-0000-7000-8000-{n:012}")
}

async fn admin() -> PoisonAdmin {
    PoisonAdmin::connect(
        AmqpConfig::new(url()).connection_name(format!("poison-test {}", unique())),
    )
    .await
    .expect("the broker must answer at CHOREO_AMQP_URL (or the local default)")
}

async fn ids_in(admin: &PoisonAdmin, queue: &str) -> BTreeSet<String> {
    admin
        .show(queue, u32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_messages_are_listed_by_kind_and_shown_without_loss() {
    let s = poisoned(0..6, 2).await;
    let handler_queue = s.broker.queue("charge");

    let listed = s.admin.list(&s.broker.service).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let queue = &listed[0];
    assert_eq!(queue.queue, s.poison);
    assert_eq!(queue.handler, handler_queue);
    assert_eq!(queue.messages, 5);
    assert_eq!(queue.scanned, 5);
    let kinds: BTreeMap<&str, u32> = queue.kinds.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(kinds, BTreeMap::from([("decode", 2), ("permanent", 3)]));

    let before = ids_in(&s.admin, &s.poison).await;
    assert_eq!(before.len(), 5);
    let shown = s.admin.show(&s.poison, 100).await.unwrap();
    assert_eq!(
        s.admin.count(&s.poison).await.unwrap(),
        5,
        "show takes nothing"
    );
    assert_eq!(
        ids_in(&s.admin, &s.poison).await,
        before,
        "the same messages"
    );
    assert_eq!(s.admin.show(&s.poison, 2).await.unwrap().len(), 2);
    assert_eq!(s.admin.count(&s.poison).await.unwrap(), 5);

    let permanent: Vec<_> = shown.iter().filter(|m| m.kind == "permanent").collect();
    assert_eq!(permanent.len(), 3);
    for message in &permanent {
        assert_eq!(message.event.as_deref(), Some("orders.order-placed"));
        assert_eq!(message.version, Some(1));
        assert_eq!(message.handler, handler_queue);
        assert_eq!(message.attempts, Some(1));
        assert!(
            message
                .error
                .as_deref()
                .unwrap()
                .ends_with("cannot be charged"),
            "{message:?}"
        );
        assert_eq!(
            message.exchange.as_deref(),
            Some(s.broker.exchange("orders").as_str())
        );
        assert_eq!(
            message.routing_key.as_deref(),
            Some("orders.order-placed.v1")
        );
        assert!(message.first_failed_at.is_some() && message.last_failed_at.is_some());
        assert!(
            message.body_text().contains("\"total_cents\": 1999"),
            "pretty JSON"
        );
    }
    let decode: Vec<_> = shown.iter().filter(|m| m.kind == "decode").collect();
    assert_eq!(decode.len(), 2);
    assert!(
        decode
            .iter()
            .all(|m| m.id.starts_with("00000000-0000-7000-8000-") && m.attempts == Some(0))
    );

    // JSON for tools: times in RFC 3339, bodies as JSON.
    let json = serde_json::to_value(permanent[0]).unwrap();
    assert_eq!(json["body"]["total_cents"], 1999);
    let last = json["last_failed_at"].as_str().unwrap();
    assert!(choreo::envelope::parse_rfc3339(last).is_some(), "{last}");

    s.running.shutdown().await.unwrap();
    s.admin.close().await;
    s.broker.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_fixed_messages_runs_the_handler_and_empties_the_poison_queue() {
    let s = poisoned(0..6, 1).await;
    let odd = [1, 3, 5];

    // A dry run moves nothing and says what would move.
    let selection = Selection::all().kind(FailureKind::Permanent);
    let dry = s.admin.replay(&s.poison, &selection, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.replayed.len(), 3, "{dry:?}");
    assert_eq!(dry.left, 4, "nothing moved");
    assert!(
        dry.replayed
            .iter()
            .all(|r| r.handler == s.broker.queue("charge"))
    );
    assert_eq!(s.admin.count(&s.poison).await.unwrap(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(odd.iter().all(|id| s.runs.succeeded(*id) == 0));

    // A filter that selects nothing moves nothing.
    let future = SystemTime::now() + Duration::from_secs(3600);
    let none = s
        .admin
        .replay(&s.poison, &Selection::all().since(future), false)
        .await
        .unwrap();
    assert!(none.replayed.is_empty());
    assert_eq!(none.left, 4);

    // The cause is fixed: replay one message by id, then the other permanent failures.
    s.fixed.0.store(true, Ordering::SeqCst);
    let shown = s.admin.show(&s.poison, 10).await.unwrap();
    let first = shown.iter().find(|m| m.kind == "permanent").unwrap();
    let one = s
        .admin
        .replay(&s.poison, &Selection::all().id(&first.id), false)
        .await
        .unwrap();
    assert_eq!(one.replayed.len(), 1);
    assert_eq!(one.replayed[0].id, first.id);
    assert_eq!(one.left, 3);
    assert_eq!(s.admin.count(&s.poison).await.unwrap(), 3);

    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let rest = s
        .admin
        .replay(&s.poison, &selection.clone().since(an_hour_ago), false)
        .await
        .unwrap();
    assert_eq!(rest.replayed.len(), 2, "{rest:?}");
    assert!(rest.failed.is_empty());
    assert!(eventually(WAIT, || odd.iter().all(|id| s.runs.succeeded(*id) == 1)).await);

    // Handled as new messages: first run, no attempt header, one replay.
    for run in s.runs.0.lock().unwrap().iter().filter(|r| r.0 % 2 == 1) {
        assert_eq!(
            (run.1, run.2, run.3.as_deref()),
            (1, 0, Some("1")),
            "{run:?}"
        );
    }
    assert_eq!(
        s.admin.count(&s.poison).await.unwrap(),
        1,
        "the decode failure stays"
    );
    let left = s.admin.show(&s.poison, 10).await.unwrap();
    assert_eq!(left[0].kind, "decode");

    s.running.shutdown().await.unwrap();
    s.admin.close().await;
    s.broker.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_id_and_of_everything() {
    let s = poisoned(0..8, 0).await;
    s.running.shutdown().await.unwrap();
    let ids = ids_in(&s.admin, &s.poison).await;
    assert_eq!(ids.len(), 4);
    let victim = ids.iter().next().unwrap().clone();

    let report = s
        .admin
        .purge(&s.poison, &Selection::all().id(&victim))
        .await
        .unwrap();
    assert_eq!(
        (report.purged, report.ids.clone()),
        (1, vec![victim.clone()])
    );
    let left = ids_in(&s.admin, &s.poison).await;
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&victim));

    let report = s.admin.purge(&s.poison, &Selection::all()).await.unwrap();
    assert_eq!((report.purged, report.left), (3, 0));
    assert_eq!(s.admin.count(&s.poison).await.unwrap(), 0);

    s.admin.close().await;
    s.broker.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_non_poison_queues_are_refused() {
    let admin = admin().await;
    let missing = format!("{}.nothing.poison", unique());
    for result in [
        admin.show(&missing, 10).await.map(drop),
        admin
            .replay(&missing, &Selection::all(), false)
            .await
            .map(drop),
        admin.purge(&missing, &Selection::all()).await.map(drop),
    ] {
        let error = result.unwrap_err();
        assert!(matches!(error, AmqpError::NoSuchQueue { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            format!("no queue `{missing}` on the broker")
        );
    }
    let error = admin.show("billing.charge-card", 10).await.unwrap_err();
    assert!(
        matches!(error, AmqpError::NotAPoisonQueue { .. }),
        "{error}"
    );

    let unreachable =
        PoisonAdmin::connect(AmqpConfig::new(url()).management_url("http://127.0.0.1:9"))
            .await
            .unwrap();
    let error = unreachable.list("").await.unwrap_err().to_string();
    assert!(
        error.contains("rabbitmq-plugins enable rabbitmq_management"),
        "{error}"
    );
    unreachable.close().await;
    admin.close().await;
}

/// Fills the poison queue of `<service>.charge` with `count` messages straight from here,
/// and declares the handler queue without consuming it, so replayed copies stay there.
async fn many_poisoned(broker: &mut Broker, count: usize) -> (String, String, BTreeSet<String>) {
    let service = Service::new(broker.service.clone())
        .handler(charge)
        .state(Fixed::default())
        .state(Runs::default());
    broker.track(&service);
    broker
        .transport
        .declare(&service.topology().unwrap())
        .await
        .unwrap();
    let queue = broker.queue("charge");
    let poison = format!("{queue}.poison");
    let channel = broker.raw().await.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let now = Rfc3339(SystemTime::now()).to_string();
    let mut ids = BTreeSet::new();
    for n in 0..count {
        let id = choreo::envelope::new_id().to_string();
        let mut table = FieldTable::default();
        let mut put = |name: &str, value: &str| {
            table.insert(name.into(), AMQPValue::LongString(value.into()));
        };
        use headers::failure as f;
        put(f::HANDLER, &queue);
        put(f::KIND, "permanent");
        put(f::MESSAGE, "card declined");
        put(f::ATTEMPTS, "1");
        put(f::FIRST_AT, &now);
        put(f::LAST_AT, &now);
        put(f::EXCHANGE, "orders");
        put(f::ROUTING_KEY, "orders.order-placed.v1");
        let properties = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_type("orders.order-placed".into())
            .with_delivery_mode(2)
            .with_headers(table);
        let body = serde_json::to_vec(&order(n as u64)).unwrap();
        let _confirm = channel
            .basic_publish(
                "".into(),
                poison.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .unwrap();
        ids.insert(id);
    }
    assert!(channel.wait_for_confirms().await.unwrap().is_empty());
    let _ = channel.close(200, "done".into()).await;
    (queue, poison, ids)
}

/// After an interrupted replay: every message is in the poison queue or the handler queue,
/// and only a batch in flight may be in both.
async fn assert_nothing_lost(broker: &Broker, queue: &str, poison: &str, ids: &BTreeSet<String>) {
    let id_of = |m: &lapin::message::BasicGetMessage| {
        m.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string()
    };
    let in_poison: Vec<String> = broker.drain(poison).await.iter().map(id_of).collect();
    let in_handler: Vec<String> = broker.drain(queue).await.iter().map(id_of).collect();
    let poison_set: BTreeSet<String> = in_poison.iter().cloned().collect();
    let handler_set: BTreeSet<String> = in_handler.iter().cloned().collect();
    assert_eq!(
        poison_set.len(),
        in_poison.len(),
        "no copies within the poison queue"
    );
    assert_eq!(
        handler_set.len(),
        in_handler.len(),
        "no copies within the handler queue"
    );
    let everywhere: BTreeSet<String> = poison_set.union(&handler_set).cloned().collect();
    assert_eq!(&everywhere, ids, "every message is somewhere");
    let both = poison_set.intersection(&handler_set).count();
    assert!(
        both <= 64,
        "{both} messages in both queues: more than one batch"
    );
    assert!(
        !handler_set.is_empty() && !poison_set.is_empty(),
        "interrupted mid-way"
    );
    eprintln!(
        "replayed {} of {}; {} in both queues",
        handler_set.len(),
        ids.len(),
        both
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_connection_is_closed_from_within_loses_nothing() {
    const MESSAGES: usize = 3_000;
    let mut broker = Broker::new().await;
    let (queue, poison, ids) = many_poisoned(&mut broker, MESSAGES).await;
    let admin = Arc::new(admin().await);
    let replay = tokio::spawn({
        let admin = Arc::clone(&admin);
        let poison = poison.clone();
        async move { admin.replay(&poison, &Selection::all(), false).await }
    });
    let mut moved = 0;
    while moved < 300 && !replay.is_finished() {
        moved = broker.ready(&queue).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    admin.close().await;
    let result = replay.await.unwrap();
    assert!(result.is_err(), "the replay was interrupted: {result:?}");
    // The broker returns the unacknowledged messages as it closes the channel.
    wait_for_requeue(&broker, &queue, &poison, MESSAGES).await;
    assert_nothing_lost(&broker, &queue, &poison, &ids).await;
    broker.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_connection_the_broker_closes_loses_nothing() {
    const MESSAGES: usize = 5_000;
    let mut broker = Broker::new().await;
    let (queue, poison, ids) = many_poisoned(&mut broker, MESSAGES).await;
    let name = format!("poison-test {}", unique());
    let admin = Arc::new(
        PoisonAdmin::connect(AmqpConfig::new(url()).connection_name(&name))
            .await
            .unwrap(),
    );
    let pid = connection_pid(&format!("{name} (poison)"));
    let replay = tokio::spawn({
        let admin = Arc::clone(&admin);
        let poison = poison.clone();
        async move { admin.replay(&poison, &Selection::all(), false).await }
    });
    while broker.ready(&queue).await < 200 && !replay.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rabbitmqctl(&["close_connection", &pid, "closed by the poison replay test"]);
    let result = replay.await.unwrap();
    assert!(result.is_err(), "the replay was interrupted: {result:?}");
    wait_for_requeue(&broker, &queue, &poison, MESSAGES).await;
    assert_nothing_lost(&broker, &queue, &poison, &ids).await;
    admin.close().await;
    broker.clean_up().await;
}

/// Waits until the two queues hold at least `total` messages between them: the closed
/// channel's unacknowledged messages are back.
async fn wait_for_requeue(broker: &Broker, queue: &str, poison: &str, total: usize) {
    for _ in 0..1500 {
        let ready = broker.ready(queue).await + broker.ready(poison).await;
        if ready as usize >= total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("messages did not come back to the queues");
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed next to the broker");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The broker's id of the connection named `name`.
fn connection_pid(name: &str) -> String {
    let listing = rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    listing
        .lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named `{name}` in:\n{listing}"))
        .to_owned()
}
