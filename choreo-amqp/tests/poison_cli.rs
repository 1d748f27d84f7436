//! `choreo poison` run as an operator runs it, against a real RabbitMQ: the output, the JSON
//! and the exit codes of list, show, replay and purge, and the one-line errors.

mod support;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use choreo::envelope::headers;
use choreo::{HandlerError, Service, State, handler};
use choreo_amqp::AmqpConfig;
use choreo_amqp::poison::PoisonAdmin;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use support::{Broker, OrderPlaced, eventually, order, url};

#[derive(Clone, Default)]
struct Fixed(Arc<AtomicBool>);

#[derive(Clone, Default)]
struct Handled(Arc<AtomicUsize>);

/// Odd orders fail permanently until the cause is fixed.
#[handler(name = "charge")]
async fn charge(
    order: OrderPlaced,
    State(fixed): State<Fixed>,
    State(handled): State<Handled>,
) -> Result<(), HandlerError> {
    if order.order_id % 2 == 1 && !fixed.0.load(Ordering::SeqCst) {
        return Err(HandlerError::permanent_msg(format!(
            "order {} cannot be charged",
            order.order_id
        )));
    }
    handled.0.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Runs `choreo <args>` against the test broker.
async fn choreo(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_choreo"))
            .args(&args)
            .env(choreo_amqp::URL_ENV, url())
            .env_remove(choreo_amqp::MANAGEMENT_URL_ENV)
            .output()
            .expect("the choreo binary runs")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
}

/// Exit code 2 and one line on standard error, which contains `expected`.
fn assert_one_line_error(output: &Output, expected: &str) {
    assert_eq!(output.status.code(), Some(2), "stdout: {}", stdout(output));
    let error = stderr(output);
    assert_eq!(error.lines().count(), 1, "one line: {error}");
    assert!(error.starts_with("error: "), "{error}");
    assert!(error.contains(expected), "`{expected}` in: {error}");
    assert!(stdout(output).is_empty(), "nothing on stdout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_replay_and_purge_from_the_command_line() {
    let mut broker = Broker::new().await;
    let fixed = Fixed::default();
    let handled = Handled::default();
    let service = Service::new(broker.service.clone())
        .handler(charge)
        .state(fixed.clone())
        .state(handled.clone());
    broker.track(&service);
    let running = service.start(&broker.transport).await.unwrap();
    let publisher = broker.transport.publisher("test");
    for id in 0..6 {
        publisher.publish(&order(id)).await.unwrap();
    }
    let mut table = FieldTable::default();
    table.insert(headers::VERSION.into(), AMQPValue::LongUInt(1));
    for n in 0..2 {
        let properties = BasicProperties::default()
            .with_type("orders.order-placed".into())
            .with_message_id(format!("00000000-0000-7000-8000-{n:012}").into())
            .with_headers(table.clone());
        broker
            .publish_raw(
                &broker.exchange("orders"),
                "orders.order-placed.v1",
                properties,
                b"{\"order_id\":\"seven\"}",
            )
            .await;
    }
    let admin = PoisonAdmin::connect(AmqpConfig::new(url())).await.unwrap();
    let handler_queue = broker.queue("charge");
    let poison = format!("{handler_queue}.poison");
    let mut count = 0;
    for _ in 0..1500 {
        count = admin.count(&poison).await.unwrap();
        if count == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count, 5);

    // list: a table, and JSON.
    let out = choreo(&["poison", "list", "--prefix", &broker.service]).await;
    assert_success(&out);
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with(&poison))
        .unwrap_or_else(|| panic!("a row for {poison}:\n{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..2], [poison.as_str(), "5"], "{row}");
    assert!(row.ends_with("permanent 3, decode 2"), "{row}");
    assert!(text.starts_with("QUEUE"), "{text}");
    assert!(text.ends_with("1 poison queue, 5 messages\n"), "{text}");
    let out = choreo(&["poison", "list", "--prefix", &broker.service, "--json"]).await;
    assert_success(&out);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json[0]["queue"], poison.as_str());
    assert_eq!(json[0]["handler"], handler_queue.as_str());
    assert_eq!(json[0]["messages"], 5);
    assert_eq!(json[0]["kinds"]["permanent"], 3);
    assert_eq!(json[0]["kinds"]["decode"], 2);

    // show: the messages, and the queue unchanged.
    let out = choreo(&["poison", "show", &poison, "--limit", "2"]).await;
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("{poison}: 5 messages, the first 2 shown\n")),
        "{text}"
    );
    assert_eq!(text.matches("\nid ").count(), 2, "{text}");
    assert_eq!(admin.count(&poison).await.unwrap(), 5, "show takes nothing");
    // The handler queue's name is enough.
    let out = choreo(&["poison", "show", &handler_queue, "--json"]).await;
    assert_success(&out);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["count"], 5);
    let messages = json["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5);
    let permanent = messages.iter().find(|m| m["kind"] == "permanent").unwrap();
    assert_eq!(permanent["event"], "orders.order-placed");
    assert_eq!(permanent["version"], 1);
    assert_eq!(permanent["attempts"], 1);
    assert_eq!(permanent["body"]["total_cents"], 1999);
    assert!(
        permanent["error"]
            .as_str()
            .unwrap()
            .ends_with("cannot be charged")
    );
    assert_eq!(admin.count(&poison).await.unwrap(), 5);

    // replay: a dry run moves nothing; then the fixed handler takes the permanent failures.
    let out = choreo(&[
        "poison",
        "replay",
        &poison,
        "--kind",
        "permanent",
        "--dry-run",
    ])
    .await;
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "dry run: would replay 3 messages from {poison}; nothing moved\n"
        )),
        "{text}"
    );
    assert!(text.ends_with("5 messages left in the queue\n"), "{text}");
    assert_eq!(admin.count(&poison).await.unwrap(), 5);
    assert_eq!(handled.0.load(Ordering::SeqCst), 3, "only the even orders");

    fixed.0.store(true, Ordering::SeqCst);
    let out = choreo(&[
        "poison",
        "replay",
        &poison,
        "--kind",
        "permanent",
        "--since",
        "1h",
    ])
    .await;
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("replayed 3 messages from {poison}\n")),
        "{text}"
    );
    assert_eq!(
        text.matches(&format!("-> {handler_queue}")).count(),
        3,
        "{text}"
    );
    assert!(
        eventually(Duration::from_secs(30), || handled.0.load(Ordering::SeqCst)
            == 6)
        .await
    );
    assert_eq!(admin.count(&poison).await.unwrap(), 2);

    // Bad filters, unknown queues: one line and exit code 2.
    let out = choreo(&["poison", "replay", &poison, "--since", "last tuesday"]).await;
    assert_one_line_error(&out, "invalid --since `last tuesday`");
    let out = choreo(&["poison", "replay", &poison, "--kind", "flaky"]).await;
    assert_one_line_error(&out, "unknown failure kind `flaky`");
    let missing = format!("{}.nothing.poison", broker.service);
    let out = choreo(&["poison", "show", &missing]).await;
    assert_one_line_error(&out, &format!("no queue `{missing}` on the broker"));

    // purge: refused without --yes; by id; then everything.
    let out = choreo(&["poison", "purge", &poison]).await;
    assert_one_line_error(&out, "add --yes to confirm");
    assert_eq!(admin.count(&poison).await.unwrap(), 2, "nothing deleted");
    let victim = "00000000-0000-7000-8000-000000000000";
    let out = choreo(&["poison", "purge", &poison, "--id", victim, "--yes"]).await;
    assert_success(&out);
    assert_eq!(
        stdout(&out),
        format!("purged 1 message from {poison}\n  {victim}\n1 message left in the queue\n")
    );
    let out = choreo(&["poison", "purge", &poison, "--yes", "--json"]).await;
    assert_success(&out);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["purged"], 1);
    assert_eq!(admin.count(&poison).await.unwrap(), 0);

    running.shutdown().await.unwrap();
    admin.close().await;
    broker.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_does_not_answer_is_one_line_without_the_password() {
    let out = choreo(&[
        "poison",
        "list",
        "--url",
        "amqp://guest:hunter2@127.0.0.1:9/%2f",
    ])
    .await;
    assert_one_line_error(&out, "cannot connect to amqp://guest:***@127.0.0.1:9/%2f");
    assert!(!stderr(&out).contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_api_that_does_not_answer_says_how_to_enable_it() {
    let out = choreo(&["poison", "list", "--management-url", "http://127.0.0.1:9"]).await;
    assert_one_line_error(&out, "rabbitmq-plugins enable rabbitmq_management");
    assert!(stderr(&out).contains("http://127.0.0.1:9"));
}
