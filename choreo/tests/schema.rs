//! Exporting a service's contracts: what is exported, where, and what fails.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use choreo::handler::{Handler, HandlerInfo, StateMap};
use choreo::schema::{
    self, Contracts, EventRef, ExportedService, SchemaError, compat, load_exports,
};
use choreo::{Context, Event, EventType, HandlerError, Service, State, handler};
use serde::{Deserialize, Serialize};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlacedV1 {
    #[choreo(key)]
    order_id: u64,
    total_cents: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 2, upcast_from(OrderPlacedV1))]
struct OrderPlaced {
    #[choreo(key)]
    order_id: u64,
    total_cents: u64,
    currency: String,
}

impl From<OrderPlacedV1> for OrderPlaced {
    fn from(v1: OrderPlacedV1) -> Self {
        Self {
            order_id: v1.order_id,
            total_cents: v1.total_cents,
            currency: "EUR".into(),
        }
    }
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "billing.payment-captured", version = 1)]
struct PaymentCaptured {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "audit.order-seen", version = 1)]
struct OrderSeen {
    order_id: u64,
}

#[handler(emits(PaymentCaptured))]
async fn capture_payment(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "choreo-schema-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn billing() -> Service {
    Service::new("billing")
        .publishes::<OrderSeen>()
        .handler(capture_payment)
}

#[test]
fn publishes_feeds_the_topology() -> TestResult {
    let service = billing();
    assert_eq!(
        service.topology()?.exchanges,
        ["audit", "billing", "orders"],
        "the exchange of a published event is declared too"
    );
    assert_eq!(service.published().len(), 1);
    assert_eq!(service.published()[0].name, "audit.order-seen");
    // Declaring twice is declaring once.
    assert_eq!(billing().publishes::<OrderSeen>().published().len(), 1);
    let handlers: Vec<&str> = service.handlers().map(|h| h.name).collect();
    assert_eq!(handlers, ["capture-payment"]);
    Ok(())
}

#[test]
fn an_export_holds_every_version_read_emitted_and_published() -> TestResult {
    let dir = TempDir::new("layout");
    let report = schema::export(&billing(), &dir.0)?;
    assert_eq!(report.service, "billing");
    assert_eq!(report.events, 4);
    let mut files: Vec<String> = report
        .files
        .iter()
        .map(|f| f.strip_prefix(&dir.0).map(|p| p.display().to_string()))
        .collect::<Result<_, _>>()?;
    files.sort();
    assert_eq!(
        files,
        [
            "asyncapi.json",
            "index.json",
            "schemas/audit.order-seen.v1.json",
            "schemas/billing.payment-captured.v1.json",
            "schemas/orders.order-placed.v1.json",
            "schemas/orders.order-placed.v2.json",
            "service.json",
        ]
    );

    let export = ExportedService::load(&dir.0)?;
    let handler = &export.description.handlers[0];
    assert_eq!(handler.name, "capture-payment");
    assert_eq!(handler.queue, "billing.capture-payment");
    assert_eq!(
        (handler.event.as_str(), handler.version),
        ("orders.order-placed", 2)
    );
    assert_eq!(handler.reads, [2, 1]);
    assert_eq!(
        handler.emits,
        [EventRef::new("billing.payment-captured", 1)]
    );
    let routing_keys: Vec<&str> = handler
        .bindings
        .iter()
        .map(|b| b.routing_key.as_str())
        .collect();
    assert_eq!(
        routing_keys,
        ["orders.order-placed.v2", "orders.order-placed.v1"]
    );
    assert_eq!(handler.poison_queue, "billing.capture-payment.poison");
    assert_eq!(
        handler.retry_queues,
        [
            "billing.capture-payment.retry.1s",
            "billing.capture-payment.retry.10s",
            "billing.capture-payment.retry.1m",
        ]
    );
    assert_eq!(
        export.description.publishes,
        [EventRef::new("audit.order-seen", 1)]
    );

    let v1 = export
        .events
        .iter()
        .find(|e| e.name == "orders.order-placed" && e.version == 1)
        .ok_or("v1 is exported")?;
    assert_eq!(v1.key.as_deref(), Some("order_id"));
    assert_eq!(v1.schema["x-choreo-version"], 1);
    assert!(v1.schema["properties"].get("currency").is_none());
    let captured = export
        .events
        .iter()
        .find(|e| e.name == "billing.payment-captured")
        .ok_or("emitted events are exported")?;
    assert_eq!(captured.key, None);
    assert!(captured.schema.get("x-choreo-key").is_none());

    // The queue of the handler carries both versions in the AsyncAPI document.
    let asyncapi: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("asyncapi.json"))?)?;
    let queue_messages = asyncapi["channels"]["billing.capture-payment"]["messages"]
        .as_object()
        .ok_or("the queue channel lists messages")?;
    let mut ids: Vec<&String> = queue_messages.keys().collect();
    ids.sort();
    assert_eq!(ids, ["orders.order-placed.v1", "orders.order-placed.v2"]);
    assert!(asyncapi["operations"]["billing.publish.audit.order-seen.v1"].is_object());
    Ok(())
}

#[test]
fn older_versions_stay_in_the_export_while_their_type_exists() -> TestResult {
    // The front door sends only v2; v1 is still a contract others may read.
    let front_door = Service::new("orders").publishes::<OrderPlaced>();
    let contracts = Contracts::of(&front_door)?;
    let versions: Vec<u32> = contracts.events().iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(
        contracts.description().publishes,
        [EventRef::new("orders.order-placed", 2)]
    );
    // Only what is sent gets a send operation.
    let document = contracts.asyncapi();
    assert!(document["operations"]["orders.publish.orders.order-placed.v2"].is_object());
    assert!(document["operations"]["orders.publish.orders.order-placed.v1"].is_null());
    assert!(document["channels"]["orders.order-placed.v1"].is_object());
    Ok(())
}

#[test]
fn exporting_again_replaces_the_export() -> TestResult {
    let dir = TempDir::new("again");
    schema::export(&billing(), &dir.0)?;
    let stale = dir.0.join("schemas/orders.order-placed.v0.json");
    std::fs::write(&stale, "{}")?;
    let kept = dir.0.join("schemas/notes.json");
    std::fs::write(&kept, "{}")?;
    schema::export(&Service::new("billing").handler(capture_payment), &dir.0)?;
    assert!(
        !stale.exists(),
        "schema files the export no longer holds are removed"
    );
    assert!(!dir.0.join("schemas/audit.order-seen.v1.json").exists());
    assert!(kept.exists(), "files not named like a schema stay");
    assert_eq!(load_exports([&dir.0])?[0].events.len(), 3);
    Ok(())
}

#[test]
fn contracts_in_memory_follow_the_options() -> TestResult {
    let contracts = Contracts::of(&billing())?
        .version("1.2.3")
        .exchange_prefix("acme.");
    assert_eq!(contracts.service_name(), "billing");
    assert!(contracts.event("orders.order-placed", 1).is_some());
    assert!(contracts.event("orders.order-placed", 3).is_none());
    assert_eq!(
        contracts.description().exchanges,
        ["acme.audit", "acme.billing", "acme.orders"]
    );
    assert_eq!(contracts.index().events[0].exchange, "acme.audit");
    let document = contracts.asyncapi();
    assert_eq!(document["info"]["version"], "1.2.3");
    assert_eq!(
        document["channels"]["orders.order-placed.v2"]["bindings"]["amqp"]["exchange"]["name"],
        "acme.orders"
    );
    Ok(())
}

#[test]
fn an_export_is_compatible_with_itself() -> TestResult {
    let dir = TempDir::new("self");
    schema::export(&billing(), &dir.0)?;
    let set = compat::SchemaSet::load([&dir.0])?;
    assert_eq!(set.len(), 4);
    let report = compat::check(&set, &set, compat::Mode::Full);
    assert!(report.is_compatible(), "{:?}", report.breaking);
    assert_eq!(report.compared, 4);
    // v1 and v2 of one event are different contracts: v2 requires the currency.
    let (v1, v2) = (
        set.get("orders.order-placed", 1).ok_or("v1")?,
        set.get("orders.order-placed", 2).ok_or("v2")?,
    );
    let changes = compat::check_schema("orders.order-placed", 1, v1, v2, compat::Mode::Backward);
    assert_eq!(changes[0].rule, compat::Rule::RequiredFieldAdded);
    Ok(())
}

#[derive(Clone)]
struct Ledger;

#[handler(name = "record")]
async fn record(_order: OrderPlaced, State(_ledger): State<Ledger>) -> Result<(), HandlerError> {
    Ok(())
}

#[test]
fn exporting_needs_no_shared_state() -> TestResult {
    // No `.state(Ledger)`: the service could not start, but its contracts are known.
    let reporting = Service::new("reporting").handler(record);
    assert!(reporting.topology().is_err());
    let contracts = Contracts::of(&reporting)?;
    assert_eq!(
        contracts.description().handlers[0].queue,
        "reporting.record"
    );

    let twice = Service::new("reporting").handler(record).handler(record);
    let error = Contracts::of(&twice).unwrap_err();
    assert_eq!(
        error.to_string(),
        "service `reporting` cannot be exported: invalid configuration: handler names: two handlers are named `record`"
    );
    Ok(())
}

/// A handler that says it emits an event no type in this binary declares.
struct Dishonest;

impl Handler for Dishonest {
    type Event = OrderPlaced;

    fn info(&self) -> HandlerInfo {
        static EMITS: [EventType; 1] = [EventType {
            name: "billing.invoice-lost",
            version: 7,
        }];
        HandlerInfo::new::<OrderPlaced>("dishonest", &EMITS)
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "the trait asks for a `'static` future, which an `async fn` taking `&self` is not"
    )]
    fn call(
        &self,
        _event: OrderPlaced,
        _ctx: Context,
        _state: &StateMap,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'static {
        async { Ok(()) }
    }
}

#[test]
fn what_cannot_be_exported_is_named() {
    let unknown = Contracts::of(&Service::new("billing").handler(Dishonest)).unwrap_err();
    assert!(matches!(unknown, SchemaError::NotInCatalog { .. }));
    assert_eq!(
        unknown.to_string(),
        "service `billing`: handler `dishonest` emits `billing.invoice-lost` v7, but no `#[derive(Event)]` type of that name and version is linked into this binary"
    );

    let invalid = Contracts::of(&Service::new("Billing").handler(capture_payment)).unwrap_err();
    assert!(matches!(invalid, SchemaError::Service { .. }));
    assert!(
        invalid.to_string().starts_with(
            "service `Billing` cannot be exported: invalid configuration: service name"
        ),
        "{invalid}"
    );

    let missing = load_exports([std::env::temp_dir().join("choreo-no-such-export")]).unwrap_err();
    assert!(matches!(missing, SchemaError::Io { .. }), "{missing}");
}

#[test]
fn a_tampered_export_is_refused() -> TestResult {
    let dir = TempDir::new("tampered");
    schema::export(&billing(), &dir.0)?;
    let index = dir.0.join("index.json");
    let text = std::fs::read_to_string(&index)?;
    std::fs::write(&index, text.replace("choreo-export/1", "choreo-export/9"))?;
    let error = ExportedService::load(&dir.0).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("its format is `choreo-export/9`"),
        "{error}"
    );

    std::fs::write(
        &index,
        text.replace(
            "\"schemas/audit.order-seen.v1.json\"",
            "\"../../etc/passwd\"",
        ),
    )?;
    let error = ExportedService::load(&dir.0).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is not a path inside the export"),
        "{error}"
    );
    Ok(())
}
