//! The contracts of the choreography, grouped by the domain that owns and publishes them.
//!
//! Every event is keyed by its order id, so each handler acts at most once per order.

use choreo::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One line of an order: how many of which article.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    /// The article's stock-keeping unit, e.g. `kettle`.
    pub sku: String,
    /// How many the customer ordered.
    pub quantity: u32,
}

impl OrderLine {
    /// `quantity` of `sku`.
    pub fn new(sku: impl Into<String>, quantity: u32) -> Self {
        Self {
            sku: sku.into(),
            quantity,
        }
    }
}

// orders

/// A customer placed an order. Starts every flow.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
pub struct OrderPlaced {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// Who pays.
    pub customer: String,
    /// What to deliver.
    pub lines: Vec<OrderLine>,
    /// What to charge, in cents.
    pub total_cents: u64,
}

/// The order was shipped: the flow ended well.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "orders.order-completed", version = 1)]
pub struct OrderCompleted {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// The parcel's tracking number.
    pub tracking_number: String,
}

/// The order will not be delivered, and the customer owes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "orders.order-cancelled", version = 1)]
pub struct OrderCancelled {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// Why, for the customer.
    pub reason: String,
}

// billing

/// The order's total was charged.
///
/// Carries the order lines, so inventory can reserve stock without asking orders.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "billing.payment-captured", version = 1)]
pub struct PaymentCaptured {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// The gateway's reference for the payment.
    pub payment_id: String,
    /// What was charged, in cents.
    pub amount_cents: u64,
    /// The order's lines.
    pub lines: Vec<OrderLine>,
}

/// The gateway refused to charge the order's total.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "billing.payment-declined", version = 1)]
pub struct PaymentDeclined {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// The gateway's reason.
    pub reason: String,
}

/// A captured payment was paid back in full.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "billing.payment-refunded", version = 1)]
pub struct PaymentRefunded {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// The payment refunded.
    pub payment_id: String,
    /// What was paid back, in cents.
    pub amount_cents: u64,
    /// Why the order could not go ahead.
    pub reason: String,
}

// inventory

/// Every line of a paid order is set aside in the warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "inventory.stock-reserved", version = 1)]
pub struct StockReserved {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// The lines reserved, for packing.
    pub lines: Vec<OrderLine>,
}

/// A paid order asks for more of an article than the warehouse holds; nothing was reserved.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "inventory.out-of-stock", version = 1)]
pub struct OutOfStock {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// The first article short.
    pub sku: String,
    /// How many the order asks for.
    pub requested: u32,
    /// How many are on hand.
    pub available: u32,
}

// shipping

/// The reserved goods left the warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[choreo(name = "shipping.order-shipped", version = 1)]
pub struct OrderShipped {
    /// The order.
    #[choreo(key)]
    pub order_id: String,
    /// The parcel's tracking number.
    pub tracking_number: String,
}
