use choreo::{Event, HandlerError, State, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

struct Pool;

#[handler]
async fn record(order: OrderPlaced, pool: State<Pool>) -> Result<(), HandlerError> {
    let _ = (order, pool);
    Ok(())
}

fn main() {}
