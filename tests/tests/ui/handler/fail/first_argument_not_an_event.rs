use choreo::{Event, HandlerError, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    order_id: u64,
}

#[handler]
async fn record(receipt: Receipt) -> Result<(), HandlerError> {
    let _ = receipt;
    Ok(())
}

fn main() {}
