//! Runs the orders choreography and prints its timeline: on the in-memory transport, or with
//! `--amqp` on RabbitMQ at `CHOREO_AMQP_URL` (default: a local broker, guest/guest).

#![allow(
    clippy::print_stdout,
    reason = "printing the timeline is what the demo is for"
)]

use choreo::{MemoryTransport, Unroutable};
use choreo_amqp::AmqpConfig;
use example_orders::demo::{Summary, run_demo, run_demo_on_rabbitmq};
use example_orders::timeline::Timeline;

const USAGE: &str = "usage: example-orders [--amqp]
       example-orders export-schemas <dir>

Runs the orders choreography (orders, billing, inventory and shipping) and prints its
timeline. Without arguments it runs on the in-memory transport; with --amqp, on RabbitMQ at
CHOREO_AMQP_URL (default: amqp://guest:guest@127.0.0.1:5672/%2f). export-schemas writes
the four services' contracts (JSON Schemas, AsyncAPI, service descriptions) into <dir>,
one folder per service.";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let amqp = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--amqp") => true,
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        Some("export-schemas") => return export_schemas(std::env::args().nth(2)),
        Some(other) => return Err(format!("unknown argument `{other}`\n\n{USAGE}").into()),
    };
    let timeline = Timeline::new(|line: &str| println!("{line}"));
    let summary = if amqp {
        on_rabbitmq(&timeline).await?
    } else {
        in_memory(&timeline).await?
    };
    println!("\n{summary}");
    if amqp {
        println!(
            "\nThe demo deleted its queues (handler, retry-tier and poison queues, the poisoned \
             ord-1005 with them), so the next run starts empty; the exchanges stay. Services \
             in production keep their queues."
        );
    }
    Ok(())
}

/// `export-schemas <dir>`: the contracts of the four services, a folder each.
fn export_schemas(dir: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    let dir = dir.ok_or_else(|| format!("export-schemas needs a folder\n\n{USAGE}"))?;
    for report in example_orders::export_schemas(&dir)? {
        println!("{report}");
    }
    Ok(())
}

async fn in_memory(timeline: &Timeline) -> Result<Summary, Box<dyn std::error::Error>> {
    // Completed and cancelled orders are announced for consumers outside this example.
    let transport = MemoryTransport::builder()
        .unroutable(Unroutable::Drop)
        .build();
    println!("orders, billing, inventory and shipping on the in-memory transport");
    Ok(run_demo(&transport, timeline).await?)
}

async fn on_rabbitmq(timeline: &Timeline) -> Result<Summary, Box<dyn std::error::Error>> {
    let config = AmqpConfig::from_env();
    println!(
        "orders, billing, inventory and shipping on RabbitMQ at {}, each service with \
         connections of its own; queues left by an earlier run are deleted first",
        config.redacted_url()
    );
    Ok(run_demo_on_rabbitmq(&config, timeline).await?)
}
