//! Publishing with confirms that survive reconnections.
//!
//! Every publish waits for the broker's confirm, but never for long: a confirm that does
//! not come within the confirm timeout marks the connection dead and the message is sent
//! again, under the same message id, on a fresh connection — so a consumer's idempotency
//! absorbs the copy if the first one did arrive. Only when the publish timeout runs out does
//! the caller see an error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{BasicProperties, Channel};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::AmqpConfig;
use crate::connection::Link;
use crate::error::{AmqpError, amqp_error};
use crate::topology::short;

/// Confirm-mode channels on the publishing connection, used round-robin.
pub(crate) struct Publishing {
    pub(crate) link: Link,
    config: Arc<AmqpConfig>,
    pool: RwLock<Option<Arc<Pool>>>,
    next: AtomicUsize,
    refresh: Mutex<()>,
}

struct Pool {
    generation: u64,
    /// In an `Arc`: a publish takes one reference, where cloning a `Channel` takes a dozen.
    channels: Vec<RwLock<Arc<Channel>>>,
}

/// Where a message goes and how.
pub(crate) struct Target<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) mandatory: bool,
    /// Whether the body size limit applies: it does to new events, not to a delivered
    /// message moved to a retry or poison queue (a too-large message must reach its poison
    /// queue).
    pub(crate) limit_body: bool,
}

impl Publishing {
    pub(crate) fn new(link: Link, config: Arc<AmqpConfig>) -> Self {
        Self {
            link,
            config,
            pool: RwLock::new(None),
            next: AtomicUsize::new(0),
            refresh: Mutex::new(()),
        }
    }

    /// Publishes `payload` and waits for the broker's confirm, through reconnections, up to
    /// the publish timeout. `properties` is called once per attempt.
    pub(crate) async fn publish(
        &self,
        target: Target<'_>,
        properties: impl Fn() -> BasicProperties,
        payload: &[u8],
    ) -> Result<(), AmqpError> {
        if target.limit_body && payload.len() > self.config.max_body_size {
            return Err(AmqpError::TooLarge {
                size: payload.len(),
                limit: self.config.max_body_size,
            });
        }
        let started = Instant::now();
        let deadline = started + self.config.publish_timeout;
        let options = BasicPublishOptions {
            mandatory: target.mandatory,
            ..BasicPublishOptions::default()
        };
        loop {
            let failure = match self.channel(deadline).await {
                Err(error) => error.to_string(),
                Ok((channel, generation)) => {
                    let attempt = async {
                        let confirm = channel
                            .basic_publish(
                                short(target.exchange)?,
                                short(target.routing_key)?,
                                options,
                                payload,
                                properties(),
                            )
                            .await
                            .map_err(|e| AmqpError::broker("publishing", e))?;
                        confirm
                            .await
                            .map_err(|e| AmqpError::broker("waiting for the confirm", e))
                    };
                    let wait = self
                        .config
                        .confirm_timeout
                        .min(deadline.saturating_duration_since(Instant::now()));
                    match tokio::time::timeout(wait, attempt).await {
                        Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
                        Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)))) => {
                            return Err(AmqpError::Unroutable {
                                exchange: target.exchange.to_owned(),
                                routing_key: target.routing_key.to_owned(),
                            });
                        }
                        Ok(Ok(Confirmation::Nack(None))) => {
                            "the broker refused the message (nack)".to_owned()
                        }
                        Ok(Ok(Confirmation::NotRequested)) => {
                            "the channel was not in confirm mode".to_owned()
                        }
                        Ok(Err(AmqpError::Broker { source, .. }))
                            if is_missing_exchange(&source) =>
                        {
                            return Err(AmqpError::Unroutable {
                                exchange: target.exchange.to_owned(),
                                routing_key: target.routing_key.to_owned(),
                            });
                        }
                        Ok(Err(error @ AmqpError::NameTooLong(_))) => return Err(error),
                        Ok(Err(error)) => error.to_string(),
                        Err(_) => {
                            // The confirm never came: presume the connection dead and start over.
                            self.link.broken(generation).await;
                            format!("no confirm within {wait:?}")
                        }
                    }
                }
            };
            if Instant::now() >= deadline {
                return Err(AmqpError::PublishTimeout {
                    routing_key: target.routing_key.to_owned(),
                    waited: started.elapsed(),
                    last_error: failure,
                });
            }
            tracing::debug!(routing_key = target.routing_key, error = %failure, "publish failed; retrying");
            tokio::time::sleep(
                self.config
                    .reconnect_min
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    /// An open confirm-mode channel and the connection generation it belongs to.
    async fn channel(&self, deadline: Instant) -> Result<(Arc<Channel>, u64), AmqpError> {
        if let Some(found) = self.pick() {
            return Ok(found);
        }
        let _refresh = self.refresh.lock().await;
        if let Some(found) = self.pick() {
            return Ok(found);
        }
        let current = self.link.get(Some(deadline)).await?;
        let reuse = self
            .pool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|p| p.generation == current.generation);
        let pool = match reuse {
            Some(pool) => {
                // Same connection, some channels closed (e.g. by a channel error): reopen them.
                for slot in &pool.channels {
                    let closed = !slot
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .status()
                        .connected();
                    if closed {
                        let channel = open_channel(&current.connection).await?;
                        *slot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(channel);
                    }
                }
                pool
            }
            None => {
                let mut channels = Vec::with_capacity(self.config.publish_channels);
                for _ in 0..self.config.publish_channels {
                    channels.push(RwLock::new(Arc::new(
                        open_channel(&current.connection).await?,
                    )));
                }
                Arc::new(Pool {
                    generation: current.generation,
                    channels,
                })
            }
        };
        *self.pool.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&pool));
        let index = self.next.fetch_add(1, Ordering::Relaxed) % pool.channels.len();
        let channel = Arc::clone(
            &pool.channels[index]
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        Ok((channel, pool.generation))
    }

    fn pick(&self) -> Option<(Arc<Channel>, u64)> {
        let pool = self.pool.read().unwrap_or_else(PoisonError::into_inner);
        let pool = pool.as_ref()?;
        let index = self.next.fetch_add(1, Ordering::Relaxed) % pool.channels.len();
        let channel = pool.channels[index]
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        channel
            .status()
            .connected()
            .then(|| (Arc::clone(&channel), pool.generation))
    }
}

async fn open_channel(connection: &lapin::Connection) -> Result<Channel, AmqpError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::broker("opening a publishing channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| AmqpError::broker("enabling publisher confirms", e))?;
    Ok(channel)
}

fn is_missing_exchange(error: &lapin::Error) -> bool {
    amqp_error(error)
        .is_some_and(|e| matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}
