use choreo::{Event, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[derive(Debug)]
struct NotAnError;

#[handler]
async fn record(order: OrderPlaced) -> Result<(), NotAnError> {
    let _ = order;
    Ok(())
}

fn main() {}
