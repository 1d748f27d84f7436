//! The billing service: charges placed orders and refunds those that cannot be delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use choreo::{Context, HandlerError, Service, State, handler};

use crate::events::{OrderPlaced, OutOfStock, PaymentCaptured, PaymentDeclined, PaymentRefunded};

/// A payment the gateway took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    /// The gateway's reference.
    pub id: String,
    /// Who paid.
    pub customer: String,
    /// How much, in cents.
    pub amount_cents: u64,
    /// Whether it was paid back.
    pub refunded: bool,
}

/// Why the gateway did not take a payment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChargeError {
    /// The customer's card was refused: final.
    #[error("{0}")]
    Declined(String),
    /// The gateway did not answer: worth trying again.
    #[error("payment gateway timed out")]
    Unavailable,
}

/// A stand-in for a card payment gateway, with the customers' available funds. Clones share
/// it.
///
/// Charges are idempotent per order, as with a real gateway's idempotency keys: charging an
/// order twice returns the first payment.
#[derive(Clone, Debug, Default)]
pub struct PaymentGateway {
    inner: Arc<Mutex<Gateway>>,
}

#[derive(Debug, Default)]
struct Gateway {
    funds: HashMap<String, u64>,
    outages: HashMap<String, u32>,
    payments: HashMap<String, Payment>,
}

impl PaymentGateway {
    /// A gateway that knows no customer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `customer` a card with `cents` available.
    #[must_use]
    pub fn with_funds(self, customer: impl Into<String>, cents: u64) -> Self {
        self.lock().funds.insert(customer.into(), cents);
        self
    }

    /// Makes the first `failures` charges of `order_id` time out.
    #[must_use]
    pub fn with_outage(self, order_id: impl Into<String>, failures: u32) -> Self {
        self.lock().outages.insert(order_id.into(), failures);
        self
    }

    /// What `customer` can still spend, in cents.
    pub fn funds(&self, customer: &str) -> u64 {
        self.lock().funds.get(customer).copied().unwrap_or(0)
    }

    /// The payment taken for `order_id`, if any.
    pub fn payment(&self, order_id: &str) -> Option<Payment> {
        self.lock().payments.get(order_id).cloned()
    }

    /// Charges `customer` `amount_cents` for `order_id`.
    ///
    /// # Errors
    ///
    /// [`ChargeError::Unavailable`] during an outage, and [`ChargeError::Declined`] when the
    /// customer has no card or too little on it.
    pub fn charge(
        &self,
        order_id: &str,
        customer: &str,
        amount_cents: u64,
    ) -> Result<Payment, ChargeError> {
        let mut gateway = self.lock();
        if let Some(left) = gateway.outages.get_mut(order_id).filter(|left| **left > 0) {
            *left -= 1;
            return Err(ChargeError::Unavailable);
        }
        if let Some(payment) = gateway.payments.get(order_id) {
            return Ok(payment.clone());
        }
        let Some(funds) = gateway.funds.get_mut(customer) else {
            return Err(ChargeError::Declined("no card on file".to_owned()));
        };
        *funds = funds
            .checked_sub(amount_cents)
            .ok_or_else(|| ChargeError::Declined("insufficient funds".to_owned()))?;
        let payment = Payment {
            id: format!("pay-{:04}", gateway.payments.len() + 1),
            customer: customer.to_owned(),
            amount_cents,
            refunded: false,
        };
        gateway
            .payments
            .insert(order_id.to_owned(), payment.clone());
        Ok(payment)
    }

    /// Pays back the payment for `order_id` and returns it; `None` when nothing was taken.
    /// Refunding twice pays back once.
    pub fn refund(&self, order_id: &str) -> Option<Payment> {
        let mut gateway = self.lock();
        let Gateway {
            funds, payments, ..
        } = &mut *gateway;
        let payment = payments.get_mut(order_id)?;
        if !payment.refunded {
            payment.refunded = true;
            *funds.entry(payment.customer.clone()).or_default() += payment.amount_cents;
        }
        Some(payment.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Gateway> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The billing service, charging through `gateway`.
pub fn service(gateway: PaymentGateway) -> Service {
    Service::new("billing")
        .retry_policy(crate::retry_policy())
        .state(gateway)
        .handler(capture_payment)
        .handler(refund_payment)
}

/// A timeout is returned as a transient error, so the runtime retries the charge.
#[handler(emits(PaymentCaptured, PaymentDeclined))]
async fn capture_payment(
    order: OrderPlaced,
    ctx: Context,
    State(gateway): State<PaymentGateway>,
) -> Result<(), HandlerError> {
    match gateway.charge(&order.order_id, &order.customer, order.total_cents) {
        Ok(payment) => {
            // Logged inside the handler's `choreo.handle` span, so the line carries its fields.
            tracing::info!(
                order_id = %order.order_id,
                payment_id = %payment.id,
                amount_cents = payment.amount_cents,
                "payment captured"
            );
            ctx.publish(&PaymentCaptured {
                order_id: order.order_id,
                payment_id: payment.id,
                amount_cents: payment.amount_cents,
                lines: order.lines,
            })?;
        }
        Err(ChargeError::Declined(reason)) => ctx.publish(&PaymentDeclined {
            order_id: order.order_id,
            reason,
        })?,
        Err(error @ ChargeError::Unavailable) => return Err(HandlerError::transient(error)),
    }
    Ok(())
}

#[handler(emits(PaymentRefunded))]
async fn refund_payment(
    shortage: OutOfStock,
    ctx: Context,
    State(gateway): State<PaymentGateway>,
) -> Result<(), HandlerError> {
    let payment = gateway.refund(&shortage.order_id).ok_or_else(|| {
        HandlerError::permanent_msg(format!(
            "no payment to refund for order {}",
            shortage.order_id
        ))
    })?;
    ctx.publish(&PaymentRefunded {
        reason: format!(
            "out of stock: {} × {} requested, {} available",
            shortage.requested, shortage.sku, shortage.available
        ),
        order_id: shortage.order_id,
        payment_id: payment.id,
        amount_cents: payment.amount_cents,
    })?;
    Ok(())
}
