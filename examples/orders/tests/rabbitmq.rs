//! The demo on a real RabbitMQ, at `CHOREO_AMQP_URL` or the local default.
//!
//! There is no skipping: a broker that does not answer fails the test.

use std::sync::{Arc, Mutex, PoisonError};

use choreo_amqp::AmqpConfig;
use example_orders::demo::{self, Summary};
use example_orders::orders::OrderStatus;
use example_orders::timeline::{Counts, Timeline};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What every run ends with, on any transport.
fn expected() -> Summary {
    let completed = |tracking_number: &str| OrderStatus::Completed {
        tracking_number: tracking_number.into(),
    };
    let cancelled = |reason: &str| OrderStatus::Cancelled {
        reason: reason.into(),
    };
    Summary {
        orders: [
            ("ord-1001", completed("PKG-0001")),
            (
                "ord-1002",
                cancelled("payment declined: insufficient funds"),
            ),
            (
                "ord-1003",
                cancelled(
                    "out of stock: 5 × teapot requested, 2 available; payment pay-0002 refunded",
                ),
            ),
            ("ord-1004", completed("PKG-0002")),
        ]
        .into_iter()
        .map(|(id, status)| (id.to_owned(), status))
        .collect(),
        messages: Counts {
            handled: 14,
            retried: 2,
            poisoned: 1,
            duplicates: 1,
        },
    }
}

/// A timeline that keeps its lines.
fn recorded() -> (Timeline, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let timeline = Timeline::new(move |line: &str| {
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line.to_owned());
    });
    (timeline, lines)
}

/// Two runs in a row: the second starts from fresh queues and sees none of the first run's
/// messages, so both end the same.
#[tokio::test]
async fn the_demo_runs_on_rabbitmq_twice_in_a_row() -> TestResult {
    let config = AmqpConfig::from_env();
    for run in 1..=2 {
        let (timeline, lines) = recorded();
        let summary = demo::run_demo_on_rabbitmq(&config, &timeline).await?;

        assert_eq!(summary, expected(), "run {run}");
        assert_eq!((summary.completed(), summary.cancelled()), (2, 2));
        assert_eq!(timeline.open(), 0, "run {run}: every delivery settled");

        let lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
        let sections = lines.iter().filter(|l| l.starts_with("\n── ")).count();
        assert_eq!(
            (sections, lines.len() - sections),
            (6, 18),
            "run {run}: {lines:#?}"
        );
        let poisoned: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("poisoned (decode)"))
            .collect();
        assert_eq!(poisoned.len(), 1, "run {run}");
        assert!(poisoned[0].contains("billing.capture-payment"));
        assert!(poisoned[0].contains("ord-1005"));
        let duplicate = lines.iter().filter(|l| l.contains("duplicate")).count();
        assert_eq!(duplicate, 1, "run {run}");
    }
    Ok(())
}

/// A broker that is not there is an error naming the URL, not a skipped test or a hang.
#[tokio::test]
async fn an_unreachable_broker_is_an_error() {
    let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f");
    let (timeline, lines) = recorded();
    let error = demo::run_demo_on_rabbitmq(&config, &timeline)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(error, demo::DemoError::Broker(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("cannot connect to amqp://guest:***@127.0.0.1:1/%2f: "),
        "names the URL, password redacted: {message}"
    );
    assert!(message.contains("refused"), "{message}");
    assert!(
        lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    );
}
