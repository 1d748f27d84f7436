#![deny(warnings)]

use choreo::{Event, Service, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[handler]
async fn write_receipt(order: OrderPlaced) -> Result<(), std::io::Error> {
    if order.order_id == 0 {
        return Err(std::io::Error::other("no order"));
    }
    Ok(())
}

fn main() {
    let _service = Service::new("receipts").handler(write_receipt);
}
