//! The orders service: takes orders and closes them once they shipped or cannot go ahead.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use choreo::{Context, HandlerError, PublishError, Publisher, Service, State, Transport, handler};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::events::{
    OrderCancelled, OrderCompleted, OrderPlaced, OrderShipped, PaymentDeclined, PaymentRefunded,
};

/// Where an order stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Placed, not yet shipped or cancelled.
    Placed,
    /// Shipped.
    Completed {
        /// The parcel's tracking number.
        tracking_number: String,
    },
    /// Given up, with the customer owing nothing.
    Cancelled {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Placed => f.write_str("placed"),
            Self::Completed { tracking_number } => write!(f, "completed, parcel {tracking_number}"),
            Self::Cancelled { reason } => write!(f, "cancelled: {reason}"),
        }
    }
}

/// The orders service's record of every order. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct OrderBook {
    orders: Arc<Mutex<BTreeMap<String, OrderStatus>>>,
}

impl OrderBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// The status of `order_id`, if the book knows it.
    pub fn status(&self, order_id: &str) -> Option<OrderStatus> {
        self.lock().get(order_id).cloned()
    }

    /// Every order and its status, by order id.
    pub fn all(&self) -> BTreeMap<String, OrderStatus> {
        self.lock().clone()
    }

    fn set(&self, order_id: &str, status: OrderStatus) {
        self.lock().insert(order_id.to_owned(), status);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, OrderStatus>> {
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records `order` as placed and announces it; returns the message id, which is also the
/// id of the order's flow.
///
/// # Errors
///
/// As [`Publisher::publish`]; the order stays recorded as placed, so publish it again.
pub async fn place_order<T: Transport>(
    publisher: &Publisher<T>,
    book: &OrderBook,
    order: &OrderPlaced,
) -> Result<Uuid, PublishError> {
    book.set(&order.order_id, OrderStatus::Placed);
    // The front door's own span: the root of the order's trace.
    let span = tracing::info_span!("place_order", order_id = %order.order_id);
    publisher.publish(order).instrument(span).await
}

/// The orders service, keeping its records in `book`.
pub fn service(book: OrderBook) -> Service {
    Service::new("orders")
        // Placed orders come from the front door, `place_order`, not from a handler.
        .publishes::<OrderPlaced>()
        .retry_policy(crate::retry_policy())
        .state(book)
        .handler(complete_order)
        .handler(cancel_declined_order)
        .handler(cancel_refunded_order)
}

#[handler(emits(OrderCompleted))]
async fn complete_order(
    shipped: OrderShipped,
    ctx: Context,
    State(book): State<OrderBook>,
) -> Result<(), HandlerError> {
    let status = OrderStatus::Completed {
        tracking_number: shipped.tracking_number.clone(),
    };
    book.set(&shipped.order_id, status);
    ctx.publish(&OrderCompleted {
        order_id: shipped.order_id,
        tracking_number: shipped.tracking_number,
    })?;
    Ok(())
}

#[handler(emits(OrderCancelled))]
async fn cancel_declined_order(
    declined: PaymentDeclined,
    ctx: Context,
    State(book): State<OrderBook>,
) -> Result<(), HandlerError> {
    cancel(
        &ctx,
        &book,
        declined.order_id,
        format!("payment declined: {}", declined.reason),
    )
}

/// Runs once the money is back, so a cancelled order never leaves the customer charged.
#[handler(emits(OrderCancelled))]
async fn cancel_refunded_order(
    refunded: PaymentRefunded,
    ctx: Context,
    State(book): State<OrderBook>,
) -> Result<(), HandlerError> {
    let reason = format!(
        "{}; payment {} refunded",
        refunded.reason, refunded.payment_id
    );
    cancel(&ctx, &book, refunded.order_id, reason)
}

fn cancel(
    ctx: &Context,
    book: &OrderBook,
    order_id: String,
    reason: String,
) -> Result<(), HandlerError> {
    book.set(
        &order_id,
        OrderStatus::Cancelled {
            reason: reason.clone(),
        },
    );
    ctx.publish(&OrderCancelled { order_id, reason })?;
    Ok(())
}
