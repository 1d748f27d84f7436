//! Events and helpers shared by the runtime's tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[choreo(name = "orders.order-placed", version = 1)]
pub struct OrderPlaced {
    #[choreo(key)]
    pub order_id: u64,
    pub total_cents: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[choreo(name = "billing.payment-captured", version = 1)]
pub struct PaymentCaptured {
    #[choreo(key)]
    pub order_id: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[choreo(name = "billing.invoice-sent", version = 1)]
pub struct InvoiceSent {
    pub order_id: u64,
}

/// Counts calls per order id, shared with handlers through `State`.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<HashMap<u64, u32>>>);

impl Calls {
    /// Records a call for `order_id`, returning which call this is (from 1).
    pub fn hit(&self, order_id: u64) -> u32 {
        let mut calls = self.0.lock().unwrap();
        let n = calls.entry(order_id).or_default();
        *n += 1;
        *n
    }

    pub fn of(&self, order_id: u64) -> u32 {
        self.0.lock().unwrap().get(&order_id).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
}

/// A counter for handlers that need no per-order detail.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU32>);

impl Counter {
    pub fn incr(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn order(order_id: u64) -> OrderPlaced {
    OrderPlaced {
        order_id,
        total_cents: 1999,
    }
}
