use choreo::{Context, Event, HandlerError, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[handler]
async fn record(ctx: Context, order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = (ctx, order);
    Ok(())
}

fn main() {}
