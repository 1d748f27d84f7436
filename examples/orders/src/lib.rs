//! The orders choreography: four services take an order from placement to delivery, or to a
//! clean cancellation, by reacting to each other's events. No service directs the others.
//!
//! | event | published by | consumed by |
//! |---|---|---|
//! | `orders.order-placed` | the orders front door ([`orders::place_order`]) | `billing.capture-payment` |
//! | `billing.payment-captured` | `billing.capture-payment` | `inventory.reserve-stock` |
//! | `billing.payment-declined` | `billing.capture-payment` | `orders.cancel-declined-order` |
//! | `inventory.stock-reserved` | `inventory.reserve-stock` | `shipping.ship-order` |
//! | `inventory.out-of-stock` | `inventory.reserve-stock` | `billing.refund-payment` |
//! | `billing.payment-refunded` | `billing.refund-payment` | `orders.cancel-refunded-order` |
//! | `shipping.order-shipped` | `shipping.ship-order` | `orders.complete-order` |
//! | `orders.order-completed` | `orders.complete-order` | other teams |
//! | `orders.order-cancelled` | `orders.cancel-*-order` | other teams |
//!
//! Each service keeps its data in a value shared with its handlers through
//! [`State`](choreo::State): the [`OrderBook`], the [`PaymentGateway`], the [`Warehouse`] and
//! the [`Dispatch`]. [`services`] builds all four; [`demo::run_demo`] plays the scenarios on
//! the in-memory transport, and [`demo::run_demo_on_rabbitmq`] plays them on RabbitMQ with
//! each service on a connection of its own. [`health`] serves the services' liveness and
//! readiness over HTTP; with the `otel` feature, `telemetry` exports their spans through
//! OpenTelemetry.

pub mod billing;
pub mod demo;
pub mod events;
pub mod health;
pub mod inventory;
pub mod orders;
pub mod shipping;
#[cfg(feature = "otel")]
pub mod telemetry;
pub mod timeline;

use std::time::Duration;

use choreo::{RetryPolicy, Service};

pub use billing::PaymentGateway;
pub use inventory::Warehouse;
pub use orders::OrderBook;
pub use shipping::Dispatch;

/// The data behind the four services. Clones share it, so a test can look inside while the
/// services run.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    /// The orders service's records.
    pub orders: OrderBook,
    /// The payment gateway billing charges through.
    pub gateway: PaymentGateway,
    /// The stock inventory reserves from.
    pub warehouse: Warehouse,
    /// The parcels shipping has sent.
    pub dispatch: Dispatch,
}

/// The orders, billing, inventory and shipping services on `backends`.
pub fn services(backends: &Backends) -> [Service; 4] {
    [
        orders::service(backends.orders.clone()),
        billing::service(backends.gateway.clone()),
        inventory::service(backends.warehouse.clone()),
        shipping::service(backends.dispatch.clone()),
    ]
}

/// Writes the contracts of the four services into `dir`, one folder per service
/// (`dir/orders`, `dir/billing`, ...): their JSON Schemas, AsyncAPI documents and service
/// descriptions, for other teams and for `choreo schema check` and `choreo map`.
///
/// # Errors
///
/// As [`choreo::schema::Contracts::write`].
pub fn export_schemas(
    dir: impl AsRef<std::path::Path>,
) -> Result<Vec<choreo::schema::ExportReport>, choreo::schema::SchemaError> {
    let dir = dir.as_ref();
    services(&Backends::default())
        .iter()
        .map(|service| {
            choreo::schema::Contracts::of(service)?
                .version(env!("CARGO_PKG_VERSION"))
                .write(dir.join(service.name()))
        })
        .collect()
}

/// The retry policy of every service: one immediate retry after about 20 ms, then delayed
/// tiers of 100, 250 and 500 ms. Short, so the demo finishes in a moment; production would
/// keep the default tiers of 1 s, 10 s and 60 s.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .immediate(1)
        .pause(Duration::from_millis(20))
        .delays([100, 250, 500].map(Duration::from_millis))
}
