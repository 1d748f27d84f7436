//! The exported contracts of the orders choreography, checked by other tools: every JSON
//! Schema is a valid draft 2020-12 schema that the events the services really publish
//! validate against, and every AsyncAPI document passes the AsyncAPI parser.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use choreo::schema::{ExportedService, load_exports};
use choreo::testing::TestHarness;
use example_orders::{demo, services};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A fresh folder for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "choreo-contracts-{name}-{}-{}",
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

/// The orders example's exports, read back.
fn exported(dir: &TempDir) -> Result<Vec<ExportedService>, Box<dyn std::error::Error>> {
    let reports = example_orders::export_schemas(&dir.0)?;
    assert_eq!(
        reports
            .iter()
            .map(|r| r.service.as_str())
            .collect::<Vec<_>>(),
        ["orders", "billing", "inventory", "shipping"]
    );
    Ok(load_exports([&dir.0])?)
}

/// Every event version any service exports, with its schema; the copies must agree.
fn schemas(exports: &[ExportedService]) -> BTreeMap<(String, u32), Value> {
    let mut all: BTreeMap<(String, u32), Value> = BTreeMap::new();
    for export in exports {
        for event in &export.events {
            let key = (event.name.clone(), event.version);
            if let Some(seen) = all.get(&key) {
                assert_eq!(seen, &event.schema, "{key:?} differs between services");
            }
            all.insert(key, event.schema.clone());
        }
    }
    all
}

fn validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| e.to_string())
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_schema_is_a_valid_draft_2020_12_schema_with_its_identity() -> TestResult {
    let dir = TempDir::new("meta");
    let exports = exported(&dir)?;
    let all = schemas(&exports);
    assert_eq!(all.len(), 9, "every event of the choreography, once");
    for ((name, version), schema) in &all {
        if let Err(error) = jsonschema::draft202012::meta::validate(schema) {
            panic!("{name} v{version} is not a draft 2020-12 schema: {error}");
        }
        validator(schema).map_err(|e| format!("{name} v{version} does not compile: {e}"))?;
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["$id"], format!("urn:choreo:event:{name}:v{version}"));
        assert_eq!(schema["title"], format!("{name} v{version}"));
        assert_eq!(schema["x-choreo-name"], name.as_str());
        assert_eq!(schema["x-choreo-version"], *version);
        assert_eq!(schema["x-choreo-routing-key"], format!("{name}.v{version}"));
        assert_eq!(schema["x-choreo-key"], "order_id");
        // Self-contained: every `$ref` points into the file's own `$defs`.
        for target in refs(schema) {
            let pointer = target
                .strip_prefix('#')
                .ok_or_else(|| format!("{name}: `$ref` {target} leaves the file"))?;
            assert!(
                schema.pointer(pointer).is_some(),
                "{name}: `$ref` {target} dangles"
            );
        }
    }
    Ok(())
}

fn refs(value: &Value) -> Vec<String> {
    match value {
        Value::Object(object) => object
            .iter()
            .flat_map(|(key, item)| match (key.as_str(), item) {
                ("$ref", Value::String(target)) => vec![target.clone()],
                _ => refs(item),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(refs).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn the_events_the_services_publish_validate_against_their_schemas() -> TestResult {
    let dir = TempDir::new("events");
    let all = schemas(&exported(&dir)?);
    let validators: BTreeMap<&(String, u32), jsonschema::Validator> = all
        .iter()
        .map(|(key, schema)| Ok((key, validator(schema)?)))
        .collect::<Result<_, String>>()?;

    let backends = demo::backends();
    let mut harness = TestHarness::new();
    for service in services(&backends) {
        harness.start(service).await?;
    }
    for order in [
        demo::happy_order(),
        demo::declined_order(),
        demo::out_of_stock_order(),
        demo::flaky_order(),
    ] {
        harness.publish(&order).await?;
    }
    harness.settle().await?;
    let published = harness.published_messages();
    harness.shutdown().await?;

    let mut seen = BTreeSet::new();
    for message in &published {
        let key = (message.meta.name.to_string(), message.meta.version);
        let validator = validators
            .get(&key)
            .ok_or_else(|| format!("{key:?} was published but is not exported"))?;
        let body: Value = serde_json::from_slice(&message.body)?;
        let problems = errors(validator, &body);
        assert!(problems.is_empty(), "{key:?} {body}: {problems:?}");
        seen.insert(key);
    }
    let exported: BTreeSet<(String, u32)> = all.keys().cloned().collect();
    assert_eq!(seen, exported, "every exported event was seen on the wire");
    Ok(())
}

#[test]
fn bodies_that_break_the_contract_are_rejected() -> TestResult {
    let dir = TempDir::new("reject");
    let all = schemas(&exported(&dir)?);
    let placed = validator(&all[&("orders.order-placed".to_owned(), 1)])?;

    // The demo's buggy front door writes the total as text.
    let malformed = demo::malformed_order()?;
    let body: Value = serde_json::from_slice(&malformed.body)?;
    let problems = errors(&placed, &body);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].ends_with("at /total_cents"), "{problems:?}");

    let missing_lines = json!({ "order_id": "o", "customer": "c", "total_cents": 1 });
    assert!(errors(&placed, &missing_lines)[0].contains("\"lines\" is a required property"));
    let negative_quantity = json!({
        "order_id": "o", "customer": "c", "total_cents": 1,
        "lines": [{ "sku": "kettle", "quantity": -1 }],
    });
    assert!(errors(&placed, &negative_quantity)[0].ends_with("at /lines/0/quantity"));
    Ok(())
}

#[test]
fn the_asyncapi_documents_describe_the_wire() -> TestResult {
    let dir = TempDir::new("shape");
    let exports = exported(&dir)?;
    let document = |service: &str| -> Result<Value, Box<dyn std::error::Error>> {
        let path = dir.0.join(service).join("asyncapi.json");
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    };

    let orders = document("orders")?;
    assert_eq!(orders["asyncapi"], "3.0.0");
    let placed = &orders["channels"]["orders.order-placed.v1"];
    assert_eq!(placed["address"], "orders.order-placed.v1");
    assert_eq!(
        placed["bindings"]["amqp"],
        json!({
            "is": "routingKey",
            "exchange": { "name": "orders", "type": "topic", "durable": true, "autoDelete": false },
            "bindingVersion": "0.3.0",
        })
    );
    let publish = &orders["operations"]["orders.publish.orders.order-placed.v1"];
    assert_eq!(publish["action"], "send");
    assert_eq!(
        publish["channel"]["$ref"],
        "#/channels/orders.order-placed.v1"
    );
    assert_eq!(publish["bindings"]["amqp"]["deliveryMode"], 2);
    let completes = &orders["operations"]["orders.complete-order.receive"];
    assert_eq!(completes["action"], "receive");
    assert_eq!(
        completes["channel"]["$ref"],
        "#/channels/orders.complete-order"
    );
    assert_eq!(
        orders["channels"]["orders.complete-order"]["bindings"]["amqp"]["queue"]["name"],
        "orders.complete-order"
    );
    assert!(
        orders["operations"]["orders.complete-order.send.orders.order-completed.v1"].is_object()
    );

    let billing = document("billing")?;
    let message = &billing["components"]["messages"]["orders.order-placed.v1"];
    assert_eq!(
        message["payload"]["$ref"],
        "#/components/schemas/orders.order-placed.v1"
    );
    assert_eq!(
        message["correlationId"]["location"],
        "$message.header#/choreo-correlation-id"
    );
    let headers = &billing["components"]["schemas"]["choreo.envelope-headers"];
    for name in [
        "ce-id",
        "ce-type",
        "ce-source",
        "ce-time",
        "choreo-version",
        "choreo-correlation-id",
        "traceparent",
    ] {
        assert!(headers["properties"][name].is_object(), "{name}");
    }
    // Shared definitions are hoisted once and referred to.
    assert_eq!(
        billing["components"]["schemas"]["orders.order-placed.v1"]["properties"]["lines"]["items"]
            ["$ref"],
        "#/components/schemas/OrderLine"
    );
    let poison = &billing["channels"]["billing.capture-payment.poison"];
    assert_eq!(poison["address"], "billing.capture-payment.poison");
    let poisoned = &billing["components"]["messages"]["orders.order-placed.v1.poisoned"];
    assert_eq!(
        poisoned["headers"]["allOf"][1]["$ref"],
        "#/components/schemas/choreo.failure-headers"
    );
    let failure = &billing["components"]["schemas"]["choreo.failure-headers"];
    assert_eq!(
        failure["required"].as_array().map(Vec::len),
        Some(choreo::envelope::headers::failure::ALL.len())
    );

    // What the service descriptions say matches what the services run.
    let backends = example_orders::Backends::default();
    for (export, service) in exports.iter().zip(sorted_services(&backends)) {
        let topology = service.topology()?;
        let queues: Vec<&str> = export
            .description
            .handlers
            .iter()
            .map(|h| h.queue.as_str())
            .collect();
        let expected: Vec<&str> = topology.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(queues, expected, "{}", export.description.service);
        assert_eq!(export.description.exchanges, topology.exchanges);
    }
    Ok(())
}

fn sorted_services(backends: &example_orders::Backends) -> Vec<choreo::Service> {
    let mut all: Vec<choreo::Service> = services(backends).into_iter().collect();
    all.sort_by(|a, b| a.name().cmp(b.name()));
    all
}

/// The AsyncAPI documents of the orders services pass the AsyncAPI parser (the validator
/// of the AsyncAPI tools): `node tests/asyncapi/validate.mjs`.
#[test]
fn the_asyncapi_documents_pass_the_asyncapi_parser() -> TestResult {
    let dir = TempDir::new("asyncapi");
    let exports = exported(&dir)?;
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("asyncapi");
    let script = tools.join("validate.mjs");
    assert!(
        tools
            .join("node_modules/@asyncapi/parser/package.json")
            .is_file(),
        "the AsyncAPI parser is not installed: run `npm ci --prefix tests/asyncapi` (Node.js 20 or newer)"
    );
    let documents: Vec<PathBuf> = exports
        .iter()
        .map(|e| e.dir.join("asyncapi.json"))
        .collect();
    let output = match Command::new("node").arg(&script).args(&documents).output() {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run `node` ({error}): install Node.js 20 or newer, then `npm ci --prefix tests/asyncapi`"
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the AsyncAPI parser rejected an export ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(
        stdout.matches(": valid AsyncAPI 3.0.0").count(),
        documents.len(),
        "{stdout}"
    );
    Ok(())
}
