use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
