//! Exchanges, queues and bindings (DESIGN §7).
//!
//! | object          | name                      | arguments                                        |
//! |-----------------|---------------------------|--------------------------------------------------|
//! | domain exchange | `<prefix><domain>`        | topic, durable                                   |
//! | handler queue   | `<service>.<handler>`     | quorum (or classic), durable, dead-letters to its poison queue when the broker's delivery limit is reached |
//! | retry tier      | `<queue>.retry.<delay>`   | TTL = delay, dead-letters back to the handler queue |
//! | poison queue    | `<queue>.poison`          | durable                                          |

use std::sync::{Mutex, PoisonError};

use choreo::transport::{QueueSpec, Topology};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::{AmqpConfig, QueueType};
use crate::error::{AmqpError, describe_conflict, is_precondition_failed};

/// Every topology declared so far, to declare again on a new connection.
#[derive(Default)]
pub(crate) struct Declared {
    topologies: Mutex<Vec<Topology>>,
}

impl Declared {
    pub(crate) fn remember(&self, topology: &Topology) {
        let mut all = self
            .topologies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !all.contains(topology) {
            all.push(topology.clone());
        }
    }

    pub(crate) fn forget(&self, topology: &Topology) {
        self.topologies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|t| t != topology);
    }

    pub(crate) async fn redeclare(
        &self,
        connection: &Connection,
        config: &AmqpConfig,
    ) -> Result<(), AmqpError> {
        let all = self
            .topologies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for topology in &all {
            declare(connection, topology, config).await?;
        }
        Ok(())
    }
}

/// Declares `topology` on a channel of its own (a refused declaration closes the channel).
pub(crate) async fn declare(
    connection: &Connection,
    topology: &Topology,
    config: &AmqpConfig,
) -> Result<(), AmqpError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::broker("opening a channel to declare topology", e))?;
    let result = declare_on(&channel, topology, config).await;
    if channel.status().connected() {
        let _ = channel.close(200, "declared".into()).await;
    }
    result
}

async fn declare_on(
    channel: &Channel,
    topology: &Topology,
    config: &AmqpConfig,
) -> Result<(), AmqpError> {
    for domain in &topology.exchanges {
        let exchange = config.exchange(domain);
        channel
            .exchange_declare(
                short(&exchange)?,
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| conflict_or(e, format!("exchange `{exchange}`")))?;
    }
    for queue in &topology.queues {
        declare_queue(channel, queue, config).await?;
    }
    Ok(())
}

async fn declare_queue(
    channel: &Channel,
    spec: &QueueSpec,
    config: &AmqpConfig,
) -> Result<(), AmqpError> {
    let poison = spec.poison_queue();
    queue(channel, &poison, base_arguments(config.queue_type)).await?;

    let mut arguments = base_arguments(config.queue_type);
    dead_letter_to(&mut arguments, &poison, config.queue_type);
    if config.queue_type == QueueType::Quorum {
        // A backstop for messages the broker itself keeps redelivering (a consumer that
        // crashes on them): choreo's own retries republish and never count against it.
        let limit = i64::from(spec.max_attempts.max(1))
            .saturating_mul(2)
            .max(10);
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
    }
    queue(channel, &spec.name, arguments).await?;
    for binding in &spec.bindings {
        let exchange = config.exchange(&binding.exchange);
        channel
            .queue_bind(
                short(&spec.name)?,
                short(&exchange)?,
                short(&binding.routing_key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                AmqpError::broker(format!("binding `{}` to `{exchange}`", spec.name), e)
            })?;
    }

    for delay in &spec.retry_tiers {
        let name = spec.retry_queue(*delay);
        let mut arguments = base_arguments(config.queue_type);
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        dead_letter_to(&mut arguments, &spec.name, config.queue_type);
        queue(channel, &name, arguments).await?;
    }
    Ok(())
}

fn base_arguments(queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(queue_type.as_str())),
    );
    arguments
}

fn dead_letter_to(arguments: &mut FieldTable, queue: &str, queue_type: QueueType) {
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(queue)),
    );
    if queue_type == QueueType::Quorum {
        // At-least-once dead-lettering: the broker keeps the message until the target
        // queue confirms it. It requires `reject-publish` overflow.
        arguments.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString(LongString::from("at-least-once")),
        );
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
    }
}

async fn queue(channel: &Channel, name: &str, arguments: FieldTable) -> Result<(), AmqpError> {
    channel
        .queue_declare(
            short(name)?,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(drop)
        .map_err(|e| conflict_or(e, format!("queue `{name}`")))
}

fn conflict_or(error: lapin::Error, object: String) -> AmqpError {
    if is_precondition_failed(&error) {
        AmqpError::TopologyConflict {
            detail: describe_conflict(&error),
            object,
        }
    } else {
        AmqpError::broker(format!("declaring {object}"), error)
    }
}

pub(crate) fn short(name: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(name).map_err(|_| AmqpError::NameTooLong(name.to_owned()))
}

/// Deletes every queue of `topology` (handler, retry tiers, poison); exchanges stay, as
/// other services may use them. For tests and tear-down.
pub(crate) async fn delete(connection: &Connection, topology: &Topology) -> Result<(), AmqpError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::broker("opening a channel to delete topology", e))?;
    for spec in &topology.queues {
        let names = std::iter::once(spec.name.clone())
            .chain(spec.retry_tiers.iter().map(|d| spec.retry_queue(*d)))
            .chain(std::iter::once(spec.poison_queue()));
        for name in names {
            channel
                .queue_delete(short(&name)?, QueueDeleteOptions::default())
                .await
                .map_err(|e| AmqpError::broker(format!("deleting queue `{name}`"), e))?;
        }
    }
    let _ = channel.close(200, "deleted".into()).await;
    Ok(())
}

/// Deletes an exchange. For tests and tear-down.
pub(crate) async fn delete_exchange(
    connection: &Connection,
    exchange: &str,
) -> Result<(), AmqpError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::broker("opening a channel to delete an exchange", e))?;
    channel
        .exchange_delete(short(exchange)?, ExchangeDeleteOptions::default())
        .await
        .map_err(|e| AmqpError::broker(format!("deleting exchange `{exchange}`"), e))?;
    let _ = channel.close(200, "deleted".into()).await;
    Ok(())
}
