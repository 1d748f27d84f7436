#![deny(warnings)]

use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "inventory.stock-reserved", version = 1)]
struct StockReserved(#[choreo(key)] String, u32);

fn main() {
    assert_eq!(StockReserved::KEY_FIELD, Some("0"));
    let reserved = StockReserved("sku-1".to_owned(), 3);
    assert_eq!(reserved.key().as_deref(), Some("sku-1"));
    assert_eq!(reserved.1, 3);
}
