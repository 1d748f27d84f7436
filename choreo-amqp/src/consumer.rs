//! Consuming a handler queue, and settling each delivery.
//!
//! Each handler queue gets its own channel with a per-consumer prefetch (never global QoS,
//! which quorum queues do not support). When the connection drops, the consumer waits for
//! the link to reconnect and consumes again; deliveries it had handed out can no longer be
//! acknowledged, so the broker redelivers them and the handler's idempotency absorbs any
//! that were already handled.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use choreo::envelope::{Rfc3339, headers};
use choreo::transport::{Consumer, Delivery, Failure, QueueSpec, Retry};
use choreo::{Message, TransportError};
use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use crate::acks::Acks;
use crate::error::AmqpError;
use crate::publisher::Target;
use crate::topology::short;
use crate::transport::Shared;
use crate::wire;

/// Deliveries of one handler queue on RabbitMQ.
pub struct AmqpConsumer {
    shared: Arc<Shared>,
    queue: Arc<QueueNames>,
    prefetch: u16,
    active: Option<Active>,
    cancelled: bool,
    interned: wire::Interned,
}

/// The queues a delivery may move to.
pub(crate) struct QueueNames {
    pub(crate) name: String,
    pub(crate) poison: String,
    spec: QueueSpec,
}

struct Active {
    channel: Channel,
    consumer: lapin::Consumer,
    generation: u64,
    acks: Arc<Acks>,
}

impl AmqpConsumer {
    pub(crate) fn new(shared: Arc<Shared>, spec: &QueueSpec) -> Self {
        Self {
            shared,
            queue: Arc::new(QueueNames {
                name: spec.name.clone(),
                poison: spec.poison_queue(),
                spec: spec.clone(),
            }),
            prefetch: spec.prefetch.max(1),
            active: None,
            cancelled: false,
            interned: wire::Interned::with_catalog(),
        }
    }

    async fn open(&self) -> Result<Active, AmqpError> {
        let current = self.shared.consume.get(None).await?;
        let channel = current
            .connection
            .create_channel()
            .await
            .map_err(|e| AmqpError::broker("opening a consumer channel", e))?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| AmqpError::broker("setting the prefetch", e))?;
        let consumer = channel
            .basic_consume(
                short(&self.queue.name)?,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| AmqpError::broker(format!("consuming `{}`", self.queue.name), e))?;
        Ok(Active {
            acks: Arc::new(Acks::new(channel.clone(), self.prefetch)),
            channel,
            consumer,
            generation: current.generation,
        })
    }
}

impl fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConsumer")
            .field("queue", &self.queue.name)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl Consumer for AmqpConsumer {
    type Delivery = AmqpDelivery;

    async fn next(&mut self) -> Option<Result<AmqpDelivery, TransportError>> {
        let mut pause = self.shared.config.reconnect_min;
        loop {
            if self.cancelled {
                return None;
            }
            let active = match &mut self.active {
                Some(active) => active,
                None => match self.open().await {
                    Ok(active) => {
                        pause = self.shared.config.reconnect_min;
                        self.active.insert(active)
                    }
                    Err(AmqpError::Closed) => return None,
                    Err(error) => {
                        tracing::warn!(queue = %self.queue.name, %error, ?pause, "cannot consume; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(self.shared.config.reconnect_max);
                        continue;
                    }
                },
            };
            let next = poll_fn(|cx| Pin::new(&mut active.consumer).poll_next(cx)).await;
            match next {
                Some(Ok(delivery)) => {
                    active.acks.delivered(delivery.delivery_tag);
                    return Some(Ok(AmqpDelivery::new(
                        delivery,
                        Arc::clone(&self.shared),
                        Arc::clone(&self.queue),
                        Arc::clone(&active.acks),
                        &mut self.interned,
                    )));
                }
                Some(Err(error)) => {
                    tracing::warn!(queue = %self.queue.name, %error, "consumer failed; consuming again");
                    let generation = active.generation;
                    self.active = None;
                    self.shared.consume.broken(generation).await;
                }
                None => {
                    // Cancelled by the broker (queue deleted, node down) or the channel closed.
                    tracing::warn!(queue = %self.queue.name, "consumer cancelled by the broker; consuming again");
                    self.active = None;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.shared.config.reconnect_max);
                }
            }
        }
    }

    async fn cancel(&mut self) {
        self.cancelled = true;
        let Some(active) = &mut self.active else {
            return;
        };
        let cancel = active
            .channel
            .basic_cancel(active.consumer.tag(), BasicCancelOptions::default());
        if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(5), cancel).await {
            tracing::debug!(queue = %self.queue.name, %error, "cancelling the consumer failed");
        }
        // Deliveries the broker sent before the cancel took effect wait in the client's
        // buffer: hand them back now rather than when the channel closes.
        while let Some(Some(Ok(delivery))) = poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut active.consumer).poll_next(cx) {
                Poll::Ready(next) => Some(next),
                Poll::Pending => None,
            })
        })
        .await
        {
            let _ = delivery.acker.nack(REQUEUE).await;
        }
    }
}

impl Drop for AmqpConsumer {
    /// Closes the consumer's channel: by now every delivery it handed out is settled.
    fn drop(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let close = active.channel.close(200, "consumer done".into());
                let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
            });
        }
    }
}

/// One message delivered from RabbitMQ. Dropping it unsettled returns it to the queue.
pub struct AmqpDelivery {
    delivery: Option<lapin::message::Delivery>,
    message: Result<Message, wire::Malformed>,
    shared: Arc<Shared>,
    queue: Arc<QueueNames>,
    acks: Arc<Acks>,
}

impl fmt::Debug for AmqpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpDelivery")
            .field("queue", &self.queue.name)
            .field("message", &self.message.as_ref().map(|m| m.meta.id))
            .finish_non_exhaustive()
    }
}

impl AmqpDelivery {
    fn new(
        mut delivery: lapin::message::Delivery,
        shared: Arc<Shared>,
        queue: Arc<QueueNames>,
        acks: Arc<Acks>,
        interned: &mut wire::Interned,
    ) -> Self {
        // The body moves into the message; moves to retry or poison queues publish from it.
        let body = std::mem::take(&mut delivery.data);
        let message = wire::decode(
            &delivery.properties,
            delivery.routing_key.as_str(),
            body,
            interned,
        );
        Self {
            delivery: Some(delivery),
            message,
            shared,
            queue,
            acks,
        }
    }

    fn take(&mut self) -> lapin::message::Delivery {
        self.delivery
            .take()
            .expect("a delivery is settled at most once: settling consumes it")
    }

    /// The body as it came.
    fn body(&self) -> &[u8] {
        match &self.message {
            Ok(message) => &message.body,
            Err(malformed) => &malformed.body,
        }
    }

    /// Publishes the delivery as it came, plus `headers`, to `queue`; then acknowledges it.
    async fn move_to(
        mut self,
        queue: &str,
        headers: Vec<(&'static str, AMQPValue)>,
    ) -> Result<(), TransportError> {
        let delivery = self.take();
        let properties = |base: &BasicProperties| wire::with_headers(base, headers.iter().cloned());
        let body = self.body();
        let moved = self
            .shared
            .publishing
            .publish(
                Target {
                    exchange: "",
                    routing_key: queue,
                    mandatory: true,
                    limit_body: false,
                },
                || properties(&delivery.properties),
                body,
            )
            .await;
        let settled = match moved {
            Ok(()) => ack(&delivery).await,
            Err(error) => {
                // Not moved: hand it back so it is delivered again, not held until the
                // channel closes.
                let _ = delivery.acker.nack(REQUEUE).await;
                Err(error.into())
            }
        };
        self.acks.settled_elsewhere(delivery.delivery_tag);
        settled
    }
}

const REQUEUE: BasicNackOptions = BasicNackOptions {
    requeue: true,
    multiple: false,
};

async fn ack(delivery: &lapin::message::Delivery) -> Result<(), TransportError> {
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map(drop)
        .map_err(|e| AmqpError::broker("acknowledging", e).into())
}

impl Delivery for AmqpDelivery {
    fn message(&self) -> Result<&Message, &str> {
        self.message.as_ref().map_err(|m| m.reason.as_str())
    }

    async fn ack(mut self) -> Result<(), TransportError> {
        let tag = self.take().delivery_tag;
        if !self.acks.finish(tag) {
            // The flush in flight picks it up.
            return Ok(());
        }
        // Boxed: only the message that starts a flush carries its future.
        Box::pin(self.acks.flush())
            .await
            .map_err(|e| AmqpError::broker("acknowledging", e).into())
    }

    async fn retry(self, retry: Retry) -> Result<(), TransportError> {
        let Some(&delay) = self.queue.spec.retry_tiers.get(retry.tier) else {
            return Err(TransportError::Other {
                message: format!("`{}` has no retry tier {}", self.queue.name, retry.tier),
                source: None,
            });
        };
        let target = self.queue.spec.retry_queue(delay);
        let headers = vec![
            (headers::ATTEMPT, AMQPValue::LongUInt(retry.attempt)),
            (headers::RETRY_TIER, AMQPValue::LongUInt(retry.tiers_passed)),
            (
                headers::FIRST_FAILURE,
                wire::string(Rfc3339(retry.first_failure).to_string()),
            ),
        ];
        self.move_to(&target, headers).await
    }

    async fn poison(self, mut failure: Failure) -> Result<(), TransportError> {
        // The runtime names the domain; on RabbitMQ the exchange carries the prefix.
        failure.exchange = self.shared.config.exchange(&failure.exchange);
        let headers = failure
            .headers()
            .into_iter()
            .map(|(name, value)| (name, wire::string(value)))
            .collect();
        let poison = Arc::clone(&self.queue);
        self.move_to(&poison.poison, headers).await
    }

    async fn requeue(mut self) -> Result<(), TransportError> {
        let delivery = self.take();
        let returned = delivery.acker.nack(REQUEUE).await;
        self.acks.settled_elsewhere(delivery.delivery_tag);
        returned
            .map(drop)
            .map_err(|e| AmqpError::broker("returning a message", e).into())
    }
}

impl Drop for AmqpDelivery {
    fn drop(&mut self) {
        let Some(delivery) = self.delivery.take() else {
            return;
        };
        // Return it now rather than when the channel closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let acks = Arc::clone(&self.acks);
            runtime.spawn(async move {
                let _ = delivery.acker.nack(REQUEUE).await;
                acks.settled_elsewhere(delivery.delivery_tag);
            });
        }
    }
}
