//! The `choreo` command's contract checks and choreography map, run as a user runs them:
//! exit codes 0, 1 and 2, and the words printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use choreo::schema::Contracts;
use choreo::{Context, Event, HandlerError, Service, handler};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The first version of a placed order.
#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlacedV1 {
    #[choreo(key)]
    order_id: String,
    total_cents: u64,
}

/// The second: the currency is explicit.
#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 2, upcast_from(OrderPlacedV1))]
struct OrderPlaced {
    #[choreo(key)]
    order_id: String,
    total_cents: u64,
    currency: String,
}

impl From<OrderPlacedV1> for OrderPlaced {
    fn from(v1: OrderPlacedV1) -> Self {
        Self {
            order_id: v1.order_id,
            total_cents: v1.total_cents,
            currency: "EUR".to_owned(),
        }
    }
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "billing.payment-captured", version = 1)]
struct PaymentCaptured {
    #[choreo(key)]
    order_id: String,
}

#[handler(emits(PaymentCaptured))]
async fn capture_payment(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

#[handler]
async fn mark_paid(_paid: PaymentCaptured) -> Result<(), HandlerError> {
    Ok(())
}

/// A fresh folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "choreo-cli-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Exports `orders` (publishes order-placed v2, consumes payment-captured) and `billing`
/// (reads order-placed v2 and v1, emits payment-captured) into `dir/orders` and
/// `dir/billing`.
fn export(dir: &Path) -> TestResult {
    let orders = Service::new("orders")
        .publishes::<OrderPlaced>()
        .handler(mark_paid);
    let billing = Service::new("billing").handler(capture_payment);
    Contracts::of(&orders)?.write(dir.join("orders"))?;
    Contracts::of(&billing)?.write(dir.join("billing"))?;
    Ok(())
}

fn choreo(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_choreo"));
    for arg in args {
        command.arg(arg);
    }
    match command.output() {
        Ok(output) => output,
        Err(error) => panic!("cannot run the choreo command: {error}"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read(path: &Path) -> Result<Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

fn write(path: &Path, value: &Value) -> TestResult {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
    Ok(())
}

/// Edits the schema of `file` in both services' exports of `dir`.
fn edit_schema(dir: &TempDir, file: &str, edit: impl Fn(&mut Value)) -> TestResult {
    for service in ["orders", "billing"] {
        let path = dir.path(&format!("{service}/schemas/{file}"));
        if path.is_file() {
            let mut schema = read(&path)?;
            edit(&mut schema);
            write(&path, &schema)?;
        }
    }
    Ok(())
}

#[test]
fn the_same_exports_are_compatible() -> TestResult {
    let dir = TempDir::new("same");
    export(&dir.0)?;
    let output = choreo(&[&"schema", &"check", &dir.0, &dir.0]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("no breaking changes (backward): 3 event versions compared"),
        "{}",
        stdout(&output)
    );
    for mode in ["backward", "forward", "full"] {
        let output = choreo(&[&"schema", &"check", &dir.0, &dir.0, &"--mode", &mode]);
        assert_eq!(output.status.code(), Some(0), "{mode}");
    }
    Ok(())
}

#[test]
fn a_required_field_added_fails_backward_and_names_the_field() -> TestResult {
    let old = TempDir::new("old");
    let new = TempDir::new("new");
    export(&old.0)?;
    export(&new.0)?;
    edit_schema(&new, "orders.order-placed.v2.json", |schema| {
        schema["properties"]["tax_cents"] =
            json!({ "type": "integer", "format": "uint64", "minimum": 0 });
        if let Some(required) = schema["required"].as_array_mut() {
            required.push(json!("tax_cents"));
        }
    })?;

    let output = choreo(&[&"schema", &"check", &old.0, &new.0]);
    let printed = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{printed}{}",
        stderr(&output)
    );
    assert!(
        printed.contains(
            "orders.order-placed v2: field `tax_cents` was added as required: consumers on the new schema reject messages from producers still on the old schema, which do not write it"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("1 breaking change (backward)"),
        "{printed}"
    );

    // Old consumers ignore the new field: forward compatible.
    let forward = choreo(&[&"schema", &"check", &old.0, &new.0, &"--mode", &"forward"]);
    assert_eq!(forward.status.code(), Some(0), "{}", stdout(&forward));
    let full = choreo(&[&"schema", &"check", &old.0, &new.0, &"--mode=full"]);
    assert_eq!(full.status.code(), Some(1));
    Ok(())
}

#[test]
fn a_widened_field_fails_forward() -> TestResult {
    let old = TempDir::new("old");
    let new = TempDir::new("new");
    export(&old.0)?;
    export(&new.0)?;
    edit_schema(&new, "orders.order-placed.v1.json", |schema| {
        schema["properties"]["total_cents"] = json!({ "type": "number" });
    })?;
    let backward = choreo(&[&"schema", &"check", &old.0, &new.0]);
    assert_eq!(backward.status.code(), Some(0), "{}", stdout(&backward));
    let forward = choreo(&[&"schema", &"check", &old.0, &new.0, &"--mode", &"forward"]);
    assert_eq!(forward.status.code(), Some(1));
    assert!(
        stdout(&forward).contains(
            "orders.order-placed v1: field `total_cents` was widened from integer to number"
        ),
        "{}",
        stdout(&forward)
    );
    Ok(())
}

#[test]
fn a_removed_version_fails() -> TestResult {
    let old = TempDir::new("old");
    let new = TempDir::new("new");
    export(&old.0)?;
    // As if the v1 type had been deleted: the new billing export lacks v1.
    let billing = Service::new("billing").handler(capture_payment);
    Contracts::of(&billing)?
        .version("2.0.0")
        .write(new.path("billing"))?;
    let index_path = new.path("billing/index.json");
    let mut index = read(&index_path)?;
    if let Some(events) = index["events"].as_array_mut() {
        events.retain(|e| !(e["name"] == "orders.order-placed" && e["version"] == 1));
    }
    write(&index_path, &index)?;

    let output = choreo(&[
        &"schema",
        &"check",
        &old.path("billing"),
        &new.path("billing"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("orders.order-placed v1: this version was removed: consumers on the new contracts no longer read it"),
        "{}",
        stdout(&output)
    );
    Ok(())
}

#[test]
fn usage_and_io_errors_exit_with_2() -> TestResult {
    let dir = TempDir::new("usage");
    export(&dir.0)?;

    let nothing = choreo(&[]);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(
        stderr(&nothing).contains("Usage: choreo"),
        "{}",
        stderr(&nothing)
    );

    let bad_mode = choreo(&[&"schema", &"check", &dir.0, &dir.0, &"--mode", &"sideways"]);
    assert_eq!(bad_mode.status.code(), Some(2));
    assert!(
        stderr(&bad_mode).contains("invalid value 'sideways'"),
        "{}",
        stderr(&bad_mode)
    );

    let missing = dir.path("missing");
    let output = choreo(&[&"schema", &"check", &dir.0, &missing]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).starts_with(&format!("error: cannot read `{}`", missing.display())),
        "{}",
        stderr(&output)
    );

    let empty = dir.path("empty");
    std::fs::create_dir_all(&empty)?;
    let output = choreo(&[&"map", &empty]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("holds no choreo export"),
        "{}",
        stderr(&output)
    );

    let map_without_dirs = choreo(&[&"map"]);
    assert_eq!(map_without_dirs.status.code(), Some(2));

    let help = choreo(&[&"schema", &"check", &"--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("--mode <MODE>"), "{}", stdout(&help));
    Ok(())
}

#[test]
fn the_map_draws_the_choreography_and_lints_it() -> TestResult {
    let dir = TempDir::new("map");
    export(&dir.0)?;

    // Both services: everything sent is consumed, everything consumed is sent.
    let output = choreo(&[&"map", &dir.path("orders"), &dir.path("billing"), &"--deny"]);
    let chart = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{chart}{}", stderr(&output));
    assert!(chart.starts_with("flowchart LR\n"), "{chart}");
    for line in [
        "    subgraph svc_billing[\"billing\"]",
        "        h_billing__capture_payment[\"capture-payment\"]",
        "        pub_orders[\"orders (outside handlers)\"]",
        "    ev_orders__order_placed([\"orders.order-placed\"])",
        "    pub_orders -->|v2| ev_orders__order_placed",
        "    ev_orders__order_placed -->|v1, v2| h_billing__capture_payment",
        "    h_billing__capture_payment --> ev_billing__payment_captured",
        "    ev_billing__payment_captured --> h_orders__mark_paid",
    ] {
        assert!(
            chart.lines().any(|l| l == line),
            "missing {line:?} in\n{chart}"
        );
    }
    assert_eq!(stderr(&output), "lint: nothing found\n");

    // A folder of exports reads the same as its services one by one.
    let whole = choreo(&[&"map", &dir.0]);
    assert_eq!(stdout(&whole), chart);

    // Billing alone: nobody publishes what it reads, nobody consumes what it emits.
    let alone = choreo(&[&"map", &dir.path("billing")]);
    assert_eq!(alone.status.code(), Some(0));
    let lint = stderr(&alone);
    assert!(
        lint.contains("lint: event `billing.payment-captured` v1 is consumed by no handler (sent by billing.capture-payment)"),
        "{lint}"
    );
    assert!(
        lint.contains("lint: handler `billing.capture-payment` reads `orders.order-placed` (v2, v1), which no service emits or publishes"),
        "{lint}"
    );
    assert!(lint.ends_with("lint: 2 findings\n"), "{lint}");
    let denied = choreo(&[&"map", &dir.path("billing"), &"--deny"]);
    assert_eq!(denied.status.code(), Some(1));
    Ok(())
}
