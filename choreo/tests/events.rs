//! What `#[derive(Event)]` gives a type: constants, keys, decoding, schemas and the catalog.

mod common;

use choreo::event::{DecodeError, EventDescriptor, lookup};
use choreo::{Event, EventType, catalog};
use common::{InvoiceSent, OrderPlaced, PaymentCaptured};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "shipping.parcel-labelled", version = 3)]
struct ParcelLabelled(#[choreo(key)] String, u32);

#[test]
fn constants_follow_the_name_and_version() {
    assert_eq!(OrderPlaced::NAME, "orders.order-placed");
    assert_eq!(OrderPlaced::VERSION, 1);
    assert_eq!(OrderPlaced::DOMAIN, "orders");
    assert_eq!(OrderPlaced::ROUTING_KEY, "orders.order-placed.v1");
    assert_eq!(OrderPlaced::KEY_FIELD, Some("order_id"));
    assert_eq!(OrderPlaced::READS, &[1]);
    assert_eq!(InvoiceSent::KEY_FIELD, None);
    assert_eq!(ParcelLabelled::ROUTING_KEY, "shipping.parcel-labelled.v3");
    assert_eq!(ParcelLabelled::KEY_FIELD, Some("0"));
    assert_eq!(
        PaymentCaptured::event_type(),
        EventType {
            name: "billing.payment-captured",
            version: 1
        }
    );
}

#[test]
fn keys_come_from_the_marked_field() {
    assert_eq!(common::order(42).key().as_deref(), Some("42"));
    assert_eq!(InvoiceSent { order_id: 1 }.key(), None);
    assert_eq!(
        ParcelLabelled("P-9".into(), 2).key().as_deref(),
        Some("P-9")
    );
}

/// A key type that only knows `to_key`: `write_key` goes through it.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Sku(String);

impl choreo::EventKey for Sku {
    fn to_key(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.0.to_uppercase())
    }
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "catalog.sku-retired", version = 1)]
struct SkuRetired {
    #[choreo(key)]
    sku: Sku,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "billing.refund-issued", version = 1)]
struct RefundIssued {
    #[choreo(key)]
    refund_id: Option<uuid::Uuid>,
}

#[test]
fn written_keys_are_the_keys_appended() {
    fn written(event: &impl Event) -> Option<String> {
        let mut out = String::from("prefix:");
        let written = event.write_key(&mut out);
        assert_eq!(written, event.key().is_some());
        if !written {
            assert_eq!(out, "prefix:", "nothing appended");
        }
        written.then(|| out["prefix:".len()..].to_owned())
    }
    assert_eq!(written(&common::order(42)).as_deref(), Some("42"));
    assert_eq!(written(&InvoiceSent { order_id: 1 }), None);
    assert_eq!(
        written(&ParcelLabelled("P-9".into(), 2)).as_deref(),
        Some("P-9")
    );
    assert_eq!(
        written(&SkuRetired {
            sku: Sku("a-1".into())
        })
        .as_deref(),
        Some("A-1")
    );
    assert_eq!(
        written(&SkuRetired {
            sku: Sku(String::new())
        }),
        None
    );
    let id = uuid::Uuid::from_u128(7);
    assert_eq!(
        written(&RefundIssued {
            refund_id: Some(id)
        }),
        Some(id.to_string())
    );
    assert_eq!(written(&RefundIssued { refund_id: None }), None);
}

#[test]
fn decode_reads_its_version_and_rejects_others() {
    let body = serde_json::to_vec(&common::order(5)).unwrap();
    assert_eq!(OrderPlaced::decode(1, &body).unwrap(), common::order(5));
    assert!(matches!(
        OrderPlaced::decode(2, &body),
        Err(DecodeError::UnknownVersion {
            name: "orders.order-placed",
            version: 2
        })
    ));
    assert!(matches!(
        OrderPlaced::decode(1, b"{\"order_id\": true}"),
        Err(DecodeError::Body(_))
    ));
}

#[test]
fn the_catalog_lists_every_derived_event_with_its_schema() {
    let all = catalog();
    let names: Vec<(&str, u32)> = all.iter().map(|d| (d.name, d.version)).collect();
    for expected in [
        ("billing.invoice-sent", 1),
        ("billing.payment-captured", 1),
        ("orders.order-placed", 1),
        ("shipping.parcel-labelled", 3),
    ] {
        assert!(names.contains(&expected), "{expected:?} in {names:?}");
    }
    assert!(names.is_sorted());

    let placed: EventDescriptor = lookup("orders.order-placed", 1).unwrap();
    assert_eq!(placed.domain, "orders");
    assert_eq!(placed.key_field, Some("order_id"));
    assert!(placed.rust_type().ends_with("OrderPlaced"));
    let schema = placed.json_schema();
    let schema = schema.as_value();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["title"], "OrderPlaced");
    assert_eq!(
        schema["required"],
        serde_json::json!(["order_id", "total_cents"])
    );
    assert_eq!(schema["properties"]["order_id"]["type"], "integer");
    assert!(lookup("orders.order-placed", 2).is_none());
}
