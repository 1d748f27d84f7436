#![deny(warnings)]

use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlacedV1 {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 2)]
struct OrderPlacedV2 {
    order_id: u64,
    currency: String,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(
    name = "orders.order-placed",
    version = 3,
    upcast_from(OrderPlacedV1, OrderPlacedV2)
)]
struct OrderPlaced {
    #[choreo(key)]
    order_id: u64,
    currency: String,
}

impl From<OrderPlacedV1> for OrderPlaced {
    fn from(old: OrderPlacedV1) -> Self {
        Self { order_id: old.order_id, currency: "EUR".into() }
    }
}

impl From<OrderPlacedV2> for OrderPlaced {
    fn from(old: OrderPlacedV2) -> Self {
        Self { order_id: old.order_id, currency: old.currency }
    }
}

fn main() {
    assert_eq!(OrderPlaced::READS, &[3, 1, 2]);
    let v1 = OrderPlaced::decode(1, br#"{"order_id":7}"#).unwrap();
    assert_eq!((v1.order_id, v1.currency.as_str()), (7, "EUR"));
    let v2 = OrderPlaced::decode(2, br#"{"order_id":8,"currency":"USD"}"#).unwrap();
    assert_eq!(v2.currency, "USD");
    assert!(OrderPlaced::decode(4, b"{}").is_err());
}
