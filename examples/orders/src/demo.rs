//! The demo: six scenarios played one after another, on the in-memory transport
//! ([`run_demo`]) or on RabbitMQ ([`run_demo_on_rabbitmq`]).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use choreo::transport::Topology;
use choreo::{
    Event, MemoryTransport, Message, PublishError, PublishOptions, Publisher, RunningService,
    Transport,
};
use choreo_amqp::{AmqpConfig, AmqpError, AmqpTransport};
use tokio::net::TcpListener;

use crate::billing::PaymentGateway;
use crate::events::{OrderLine, OrderPlaced};
use crate::health;
use crate::inventory::Warehouse;
use crate::orders::{OrderBook, OrderStatus, place_order};
use crate::timeline::{Counts, Timeline, Unsettled};
use crate::{Backends, services};

/// How long one scenario may take before the demo gives up on it.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a demo run ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Every order the orders service took, with where it ended.
    pub orders: BTreeMap<String, OrderStatus>,
    /// What happened to the messages, over all services.
    pub messages: Counts,
}

impl Summary {
    /// How many orders were completed.
    pub fn completed(&self) -> usize {
        self.count(|status| matches!(status, OrderStatus::Completed { .. }))
    }

    /// How many orders were cancelled.
    pub fn cancelled(&self) -> usize {
        self.count(|status| matches!(status, OrderStatus::Cancelled { .. }))
    }

    fn count(&self, matches: impl Fn(&OrderStatus) -> bool) -> usize {
        self.orders
            .values()
            .filter(|status| matches(status))
            .count()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "summary")?;
        for (order_id, status) in &self.orders {
            writeln!(f, "  {order_id}  {status}")?;
        }
        writeln!(
            f,
            "  orders: {} completed, {} cancelled",
            self.completed(),
            self.cancelled()
        )?;
        write!(f, "  messages: {}", self.messages)
    }
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A service did not start or stop cleanly.
    #[error(transparent)]
    Service(#[from] choreo::Error),
    /// An order could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The services were still busy when a scenario's time was up.
    #[error("the services were still busy after {0:?}")]
    Busy(Duration),
    /// Deliveries were still waiting for an outcome when a scenario's time was up.
    #[error("the services were still busy: {0}")]
    Unsettled(#[from] Unsettled),
    /// RabbitMQ could not be reached, or refused to delete the demo's queues.
    #[error(transparent)]
    Broker(#[from] AmqpError),
    /// The health endpoint stopped accepting connections or did not answer.
    #[error("health endpoint: {0}")]
    Health(#[from] std::io::Error),
}

/// The backends the demo starts with: stock, customers' funds, and a gateway that times out
/// twice on [`flaky_order`].
pub fn backends() -> Backends {
    Backends {
        gateway: PaymentGateway::new()
            .with_funds("alice", 20_000)
            .with_funds("bob", 1_000)
            .with_funds("carol", 20_000)
            .with_funds("dave", 20_000)
            .with_outage("ord-1004", 2),
        warehouse: Warehouse::new()
            .with_stock("kettle", 10)
            .with_stock("mug", 50)
            .with_stock("teapot", 2),
        ..Backends::default()
    }
}

/// Alice's order, which goes through.
pub fn happy_order() -> OrderPlaced {
    order(
        "ord-1001",
        "alice",
        vec![OrderLine::new("kettle", 1), OrderLine::new("mug", 2)],
        6_100,
    )
}

/// Bob's order, which costs more than his card allows.
pub fn declined_order() -> OrderPlaced {
    order("ord-1002", "bob", vec![OrderLine::new("teapot", 1)], 3_500)
}

/// Carol's order, for more teapots than the warehouse holds.
pub fn out_of_stock_order() -> OrderPlaced {
    order(
        "ord-1003",
        "carol",
        vec![OrderLine::new("teapot", 5)],
        17_500,
    )
}

/// Dave's order, which the gateway times out on twice before charging it.
pub fn flaky_order() -> OrderPlaced {
    order("ord-1004", "dave", vec![OrderLine::new("mug", 4)], 3_200)
}

/// An `orders.order-placed` message whose total is text, as a buggy release of the orders
/// front door might send it: the envelope is fine, the body breaks the contract.
///
/// # Errors
///
/// [`PublishError::Encode`] if the template order does not serialize.
pub fn malformed_order() -> Result<Message, PublishError> {
    let template = order("ord-1005", "erin", vec![OrderLine::new("kettle", 1)], 4_500);
    let mut message =
        Message::encode(&template, Arc::from("orders")).map_err(|source| PublishError::Encode {
            event: OrderPlaced::event_type(),
            source,
        })?;
    let body: &'static [u8] = br#"{"order_id":"ord-1005","customer":"erin","lines":[{"sku":"kettle","quantity":1}],"total_cents":"45.00"}"#;
    message.body = body.into();
    Ok(message)
}

fn order(order_id: &str, customer: &str, lines: Vec<OrderLine>, total_cents: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.to_owned(),
        customer: customer.to_owned(),
        lines,
        total_cents,
    }
}

/// Starts the four services on `transport` with [`backends`], plays every scenario, waiting
/// for the services to go quiet after each, stops them and sums up.
///
/// Every outcome is reported to `timeline`. `transport` should drop unroutable events
/// ([`Unroutable::Drop`](choreo::Unroutable::Drop)): `orders.order-completed` and
/// `orders.order-cancelled` are announced for consumers outside this example. Run it on a
/// current-thread runtime to keep each scenario's lines under its heading.
///
/// # Errors
///
/// [`DemoError::Service`] when a service does not start or stop, [`DemoError::Publish`]
/// when an order is not published, and [`DemoError::Busy`] when a scenario does not finish
/// in time.
pub async fn run_demo(
    transport: &MemoryTransport,
    timeline: &Timeline,
) -> Result<Summary, DemoError> {
    let backends = backends();
    let mut running = Vec::new();
    for service in services(&backends) {
        timeline.route(&service.topology()?);
        running.push(service.observe(timeline.clone()).start(transport).await?);
    }
    let front_door = Publisher::new(transport.clone(), "orders");
    play(
        &front_door,
        &backends.orders,
        timeline,
        Quiet::Idle(transport),
    )
    .await?;

    // Shutting down waits for every handler task, so the counts below are final.
    for service in running {
        service.shutdown().await?;
    }
    Ok(Summary {
        orders: backends.orders.all(),
        messages: timeline.counts(),
    })
}

/// Runs the four services on RabbitMQ, each on its own [`AmqpTransport`] (two connections
/// of its own, named `example-orders <service>`), plays every scenario as [`run_demo`] does,
/// stops them and sums up.
///
/// Each transport connects with a clone of `config`; the orders service's also drops
/// unroutable events (`mandatory` off), as nothing in this example consumes
/// `orders.order-completed` or `orders.order-cancelled`. Quiet is told by the outcomes
/// `timeline` observes, never by polling queues: after each scenario it waits until every
/// delivery was handled, skipped as a duplicate or poisoned.
///
/// The queues are durable, and a second run must not see the first run's messages. So the
/// demo deletes its queues — handler queues, retry tiers and poison queues — before it
/// starts, in case an earlier run was interrupted, and again when it ends, poisoned messages
/// included. Exchanges stay, as other services may use them. A service in production keeps
/// its queues: they are what carries its messages across restarts.
///
/// # Errors
///
/// [`DemoError::Broker`] when RabbitMQ cannot be reached or refuses to delete a queue,
/// [`DemoError::Service`] when a service does not start or stop, [`DemoError::Publish`]
/// when an order is not published, and [`DemoError::Unsettled`] when a scenario does not
/// finish in time. Whatever fails, the services that started are stopped and their queues
/// deleted.
pub async fn run_demo_on_rabbitmq(
    config: &AmqpConfig,
    timeline: &Timeline,
) -> Result<Summary, DemoError> {
    let (summary, _) = on_rabbitmq(config, timeline, None).await?;
    Ok(summary)
}

/// As [`run_demo_on_rabbitmq`], and serves the four services' health on `listener` while
/// they run ([`health::serve`]). After the last scenario, with the services still running,
/// it asks the endpoint itself, `GET /health/live` then `GET /health/ready`, and returns the
/// answers with the summary.
///
/// # Errors
///
/// As [`run_demo_on_rabbitmq`], and [`DemoError::Health`] when the endpoint fails or does
/// not answer.
pub async fn run_demo_on_rabbitmq_with_health(
    config: &AmqpConfig,
    timeline: &Timeline,
    listener: TcpListener,
) -> Result<(Summary, Vec<(&'static str, health::Response)>), DemoError> {
    on_rabbitmq(config, timeline, Some(listener)).await
}

async fn on_rabbitmq(
    config: &AmqpConfig,
    timeline: &Timeline,
    health: Option<TcpListener>,
) -> Result<(Summary, Vec<(&'static str, health::Response)>), DemoError> {
    let backends = backends();
    let mut deployed = Vec::new();
    let played = match deploy(config, &backends, timeline, &mut deployed).await {
        Ok(front_door) => {
            let scenarios = play(
                &front_door,
                &backends.orders,
                timeline,
                Quiet::Settled(timeline),
            );
            match health {
                None => scenarios.await.map(|()| Vec::new()),
                Some(listener) => {
                    let running: Vec<&RunningService> =
                        deployed.iter().filter_map(|d| d.running.as_ref()).collect();
                    with_health(listener, &running, scenarios).await
                }
            }
        }
        Err(error) => Err(error),
    };
    let torn_down = tear_down(deployed).await;
    let probes = played?;
    torn_down?;
    let summary = Summary {
        orders: backends.orders.all(),
        messages: timeline.counts(),
    };
    Ok((summary, probes))
}

/// Runs `scenarios` while `listener` serves the health of `running`, then probes it.
async fn with_health(
    listener: TcpListener,
    running: &[&RunningService],
    scenarios: impl Future<Output = Result<(), DemoError>>,
) -> Result<Vec<(&'static str, health::Response)>, DemoError> {
    let addr = listener.local_addr()?;
    let server = health::serve(listener, || health::Report::of(running.iter().copied()));
    let client = async {
        scenarios.await?;
        let mut probes = Vec::new();
        for path in [health::LIVE, health::READY] {
            probes.push((path, health::get(addr, path).await?));
        }
        Ok(probes)
    };
    tokio::select! {
        served = server => Err(DemoError::Health(served.err().unwrap_or_else(|| {
            std::io::Error::other("the health endpoint stopped")
        }))),
        probes = client => probes,
    }
}

/// One service on a transport of its own.
struct Deployed {
    transport: AmqpTransport,
    topology: Topology,
    /// `None` when the service failed to start; its queues may still have been declared.
    running: Option<RunningService>,
}

/// Starts every service on a transport of its own, after deleting queues an earlier run
/// left, and returns the orders front door. Pushes each service onto `deployed`, started or
/// not, so that tear-down deletes whatever it declared, even if it failed half-way.
async fn deploy(
    config: &AmqpConfig,
    backends: &Backends,
    timeline: &Timeline,
    deployed: &mut Vec<Deployed>,
) -> Result<Publisher<AmqpTransport>, DemoError> {
    let mut front_door = None;
    for service in services(backends) {
        let name = service.name().to_owned();
        let mut config = config
            .clone()
            .connection_name(format!("example-orders {name}"));
        if name == "orders" {
            // Completed and cancelled orders are announced for consumers outside this example.
            config = config.mandatory(false);
        }
        let transport = AmqpTransport::connect(config).await?;
        let topology = service.topology()?;
        transport.delete_queues(&topology).await?;
        timeline.route(&topology);
        if name == "orders" {
            front_door = Some(transport.publisher("orders"));
        }
        let started = service.observe(timeline.clone()).start(&transport).await;
        deployed.push(Deployed {
            transport,
            topology,
            running: None,
        });
        let running = started?;
        if let Some(deployment) = deployed.last_mut() {
            deployment.running = Some(running);
        }
    }
    front_door.ok_or_else(|| {
        DemoError::Service(choreo::Error::Startup {
            service: "orders".to_owned(),
            reason: "the demo has no orders service to take orders".to_owned(),
        })
    })
}

/// Stops every service, then deletes their queues and closes their connections. Every step
/// is tried; the first error is returned.
async fn tear_down(mut deployed: Vec<Deployed>) -> Result<(), DemoError> {
    let mut first_error = None;
    // Every service stops before any queue goes, so no consumer sees its queue vanish.
    for running in deployed.iter_mut().filter_map(|d| d.running.take()) {
        if let Err(error) = running.shutdown().await {
            first_error.get_or_insert(DemoError::from(error));
        }
    }
    for Deployed {
        transport,
        topology,
        ..
    } in deployed
    {
        if let Err(error) = transport.delete_queues(&topology).await {
            first_error.get_or_insert(DemoError::from(error));
        }
        transport.close().await;
    }
    first_error.map_or(Ok(()), Err)
}

/// How the demo tells that the services went quiet after a scenario.
enum Quiet<'a> {
    /// Nothing ready, in flight or waiting for a retry on the in-memory transport.
    Idle(&'a MemoryTransport),
    /// Every delivery the timeline expects has had its outcome.
    Settled(&'a Timeline),
}

impl Quiet<'_> {
    async fn wait(&self) -> Result<(), DemoError> {
        match self {
            Self::Idle(transport) => {
                let idle = async {
                    while !transport.is_idle() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                tokio::time::timeout(SCENARIO_TIMEOUT, idle)
                    .await
                    .map_err(|_| DemoError::Busy(SCENARIO_TIMEOUT))
            }
            Self::Settled(timeline) => Ok(timeline.settled(SCENARIO_TIMEOUT).await?),
        }
    }
}

/// Plays the six scenarios through `front_door`, waiting for quiet after each.
async fn play<T: Transport>(
    front_door: &Publisher<T>,
    book: &OrderBook,
    timeline: &Timeline,
    quiet: Quiet<'_>,
) -> Result<(), DemoError> {
    // Every order enters through the front door; the timeline counts what each one owes.
    let place = |order: OrderPlaced| async move {
        timeline.expect(OrderPlaced::ROUTING_KEY);
        place_order(front_door, book, &order).await
    };

    timeline.section("1. happy path: paid, reserved, shipped, completed");
    let happy_id = place(happy_order()).await?;
    quiet.wait().await?;

    timeline.section("2. payment declined: the order is cancelled");
    place(declined_order()).await?;
    quiet.wait().await?;

    timeline.section("3. out of stock: the payment is refunded, then the order cancelled");
    place(out_of_stock_order()).await?;
    quiet.wait().await?;

    timeline.section("4. the payment gateway times out twice, then charges");
    place(flaky_order()).await?;
    quiet.wait().await?;

    timeline.section("5. a malformed order goes to the poison queue");
    timeline.expect(OrderPlaced::ROUTING_KEY);
    front_door
        .transport()
        .publish(malformed_order()?)
        .await
        .map_err(PublishError::from)?;
    quiet.wait().await?;

    timeline.section("6. ord-1001 is delivered again under the same message id");
    timeline.expect(OrderPlaced::ROUTING_KEY);
    front_door
        .publish_with(
            &happy_order(),
            PublishOptions::default().message_id(happy_id),
        )
        .await?;
    quiet.wait().await
}
