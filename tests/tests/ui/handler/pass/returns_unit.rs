#![deny(warnings)]

use choreo::{Event, Handler, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[handler]
async fn log_order(order: OrderPlaced) {
    let _ = order.order_id;
}

fn main() {
    assert_eq!(log_order.info().name, "log-order");
    assert!(log_order.info().emits.is_empty());
}
