//! Runs the orders choreography and prints its timeline: on the in-memory transport, or with
//! `--amqp` on RabbitMQ at `CHOREO_AMQP_URL` (default: a local broker, guest/guest).

#![allow(
    clippy::print_stdout,
    reason = "printing the timeline is what the demo is for"
)]

use choreo::{MemoryTransport, Unroutable};
use choreo_amqp::AmqpConfig;
use example_orders::demo::{Summary, run_demo, run_demo_on_rabbitmq_with_health};
use example_orders::timeline::Timeline;
use tokio::net::TcpListener;

const USAGE: &str = "usage: example-orders [--amqp [--health-port N]]
       example-orders export-schemas <dir>

Runs the orders choreography (orders, billing, inventory and shipping) and prints its
timeline. Without arguments it runs on the in-memory transport; with --amqp, on RabbitMQ at
CHOREO_AMQP_URL (default: amqp://guest:guest@127.0.0.1:5672/%2f), serving the services'
health at http://127.0.0.1:N/health/live and /health/ready while they run (--health-port;
default: a free port). export-schemas writes the four services' contracts (JSON Schemas,
AsyncAPI, service descriptions) into <dir>, one folder per service.

Built with `--features otel`, the in-memory run also exports its spans through
OpenTelemetry and prints one order's trace and a handler's log line.";

/// What the command line asks for.
enum Mode {
    InMemory,
    Amqp { health_port: u16 },
    ExportSchemas(Option<String>),
    Help,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Mode, String> {
    let mode = match args.next().as_deref() {
        None => return Ok(Mode::InMemory),
        Some("-h" | "--help") => return Ok(Mode::Help),
        Some("export-schemas") => return Ok(Mode::ExportSchemas(args.next())),
        Some("--amqp") => match args.next().as_deref() {
            None => Mode::Amqp { health_port: 0 },
            Some("--health-port") => {
                let port = args.next().ok_or("--health-port needs a port number")?;
                let health_port = port
                    .parse()
                    .map_err(|_| format!("`{port}` is not a port number"))?;
                Mode::Amqp { health_port }
            }
            Some(other) => return Err(format!("unknown argument `{other}`")),
        },
        Some(other) => return Err(format!("unknown argument `{other}`")),
    };
    match args.next() {
        None => Ok(mode),
        Some(extra) => Err(format!("unexpected argument `{extra}`")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = match parse(std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(error) => {
            eprintln!("error: {error}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let timeline = Timeline::new(|line: &str| println!("{line}"));
    match mode {
        Mode::Help => println!("{USAGE}"),
        Mode::ExportSchemas(dir) => export_schemas(dir)?,
        Mode::InMemory => {
            #[cfg(feature = "otel")]
            let telemetry = example_orders::telemetry::Telemetry::install()?;
            let summary = in_memory(&timeline).await?;
            println!("\n{summary}");
            #[cfg(feature = "otel")]
            print_telemetry(&telemetry);
        }
        Mode::Amqp { health_port } => {
            let summary = on_rabbitmq(&timeline, health_port).await?;
            println!("\n{summary}");
            println!(
                "\nThe demo deleted its queues (handler, retry-tier and poison queues, the \
                 poisoned ord-1005 with them), so the next run starts empty; the exchanges \
                 stay. Services in production keep their queues."
            );
        }
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

async fn on_rabbitmq(
    timeline: &Timeline,
    health_port: u16,
) -> Result<Summary, Box<dyn std::error::Error>> {
    let config = AmqpConfig::from_env();
    println!(
        "orders, billing, inventory and shipping on RabbitMQ at {}, each service with \
         connections of its own; queues left by an earlier run are deleted first",
        config.redacted_url()
    );
    let listener = TcpListener::bind(("127.0.0.1", health_port)).await?;
    let addr = listener.local_addr()?;
    println!(
        "health: http://{addr}/health/live and http://{addr}/health/ready while the services run"
    );
    let (summary, probes) = run_demo_on_rabbitmq_with_health(&config, timeline, listener).await?;
    println!("\nhealth, asked after the last scenario with the services still running:");
    for (path, response) in probes {
        println!("  GET {path} -> {} {}", response.status, response.body);
    }
    Ok(summary)
}

#[cfg(feature = "otel")]
fn print_telemetry(telemetry: &example_orders::telemetry::Telemetry) {
    let order = example_orders::demo::happy_order().order_id;
    println!(
        "\nOpenTelemetry: the spans of {order}'s flow, each handler under the span that published its message"
    );
    match telemetry.flow(&order) {
        Some(flow) => println!("{flow}"),
        None => println!("  no spans were exported for {order}"),
    }
    let logs = telemetry.log_lines();
    if let Some(line) = logs
        .iter()
        .find(|l| l.contains("payment captured") && l.contains(&order))
    {
        println!(
            "\nA handler's log line ({} lines were logged at info and above); it carries the \
             fields of its choreo.handle span, the correlation id among them:\n{line}",
            logs.len()
        );
    }
}
