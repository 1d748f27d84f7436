//! Shared by the broker tests: unique names, a broker connection, queue inspection, clean-up.
//!
//! Every test gets its own exchange prefix and service name, so tests running at once never
//! see each other's messages, and deletes what it declared. The broker is
//! `CHOREO_AMQP_URL` or the local default; a broker that does not answer fails the test.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::transport::Topology;
use choreo::{Event, Service};
use choreo_amqp::{AmqpConfig, AmqpTransport};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
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
#[choreo(name = "shipping.order-shipped", version = 1)]
pub struct OrderShipped {
    #[choreo(key)]
    pub order_id: u64,
}

pub fn order(order_id: u64) -> OrderPlaced {
    OrderPlaced {
        order_id,
        total_cents: 1999,
    }
}

/// A test's own corner of the broker.
pub struct Broker {
    pub prefix: String,
    pub service: String,
    pub transport: AmqpTransport,
    raw: tokio::sync::Mutex<Arc<lapin::Connection>>,
    topologies: Vec<Topology>,
    cleaned: bool,
}

/// Restarts RabbitMQ 3.10's quorum-queue dead-letter supervisor if it has died.
///
/// It dies when queues with at-least-once dead-lettering are deleted while still starting,
/// as tests that restart the broker and then clean up can do; every quorum queue
/// declaration then fails with INTERNAL_ERROR. Best effort: without a local `rabbitmqctl`
/// (a remote broker) there is nothing to do here.
pub fn heal_dead_lettering() {
    let eval = |expression: &str| {
        std::process::Command::new("rabbitmqctl")
            .args(["-q", "eval", expression])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if eval("is_pid(whereis(rabbit_fifo_dlx_sup)).").is_some_and(|alive| alive == "false") {
        eprintln!("restarting RabbitMQ's quorum-queue dead-letter supervisor");
        eval("supervisor:restart_child(rabbit_sup, rabbit_fifo_dlx_sup).");
    }
}

async fn raw_connection() -> lapin::Connection {
    lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
        .await
        .expect("a plain connection to the broker")
}

pub fn url() -> String {
    std::env::var(choreo_amqp::URL_ENV).unwrap_or_else(|_| choreo_amqp::DEFAULT_URL.to_owned())
}

/// A unique lower-kebab suffix.
pub fn unique() -> String {
    format!("t{:x}", fastrand::u64(..) & 0xFFFF_FFFF_FFFF)
}

impl Broker {
    pub async fn new() -> Self {
        Self::with(|c| c).await
    }

    pub async fn with(configure: impl FnOnce(AmqpConfig) -> AmqpConfig) -> Self {
        static HEALED: std::sync::Once = std::sync::Once::new();
        HEALED.call_once(heal_dead_lettering);
        let id = unique();
        let config = configure(
            AmqpConfig::new(url())
                .exchange_prefix(format!("{id}."))
                .connection_name(format!("choreo-test {id}")),
        );
        let transport = AmqpTransport::connect(config)
            .await
            .expect("the broker must answer at CHOREO_AMQP_URL (or the local default)");
        let raw = tokio::sync::Mutex::new(Arc::new(raw_connection().await));
        Self {
            service: id.clone(),
            prefix: format!("{id}."),
            transport,
            raw,
            topologies: Vec::new(),
            cleaned: false,
        }
    }

    /// The queue of `handler` in this test's service.
    pub fn queue(&self, handler: &str) -> String {
        format!("{}.{handler}", self.service)
    }

    pub fn exchange(&self, domain: &str) -> String {
        format!("{}{domain}", self.prefix)
    }

    /// Remembers a service's topology for clean-up, and returns it.
    pub fn track<S: choreo::IdempotencyStore>(&mut self, service: &Service<S>) {
        self.topologies.push(service.topology().unwrap());
    }

    /// Messages ready in `queue` (not counting unacknowledged ones).
    pub async fn ready(&self, queue: &str) -> u32 {
        let channel = self.raw().await.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue `{queue}`: {e}"));
        let _ = channel.close(200, "done".into()).await;
        declared.message_count()
    }

    /// Takes every message out of `queue` (acknowledging them).
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let channel = self.raw().await.create_channel().await.unwrap();
        let mut all = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            all.push(message);
        }
        let _ = channel.close(200, "done".into()).await;
        all
    }

    /// Publishes raw bytes with raw properties, bypassing choreo.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: lapin::BasicProperties,
        body: &[u8],
    ) {
        let channel = self.raw().await.create_channel().await.unwrap();
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        let _ = channel.close(200, "done".into()).await;
    }

    /// A plain lapin connection to the broker, reopened if the broker closed it.
    pub async fn raw(&self) -> Arc<lapin::Connection> {
        let mut raw = self.raw.lock().await;
        if !raw.status().connected() {
            *raw = Arc::new(raw_connection().await);
        }
        Arc::clone(&raw)
    }

    /// Deletes every queue and exchange the test declared.
    pub async fn clean_up(mut self) {
        delete_all(&self.prefix, &self.topologies).await;
        self.cleaned = true;
        self.transport.close().await;
        let _ = self.raw().await.close(200, "done".into()).await;
    }
}

impl Drop for Broker {
    /// A test that failed before `clean_up` still leaves nothing behind.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let prefix = self.prefix.clone();
        let topologies = std::mem::take(&mut self.topologies);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(delete_all(&prefix, &topologies));
        })
        .join();
    }
}

async fn delete_all(prefix: &str, topologies: &[Topology]) {
    let Ok(transport) =
        AmqpTransport::connect(AmqpConfig::new(url()).exchange_prefix(prefix)).await
    else {
        return;
    };
    let mut domains = Vec::new();
    for topology in topologies {
        let _ = transport.delete_queues(topology).await;
        domains.extend(topology.exchanges.iter().cloned());
    }
    domains.sort();
    domains.dedup();
    for domain in domains {
        let _ = transport.delete_exchange(&domain).await;
    }
    transport.close().await;
}

/// Effects per key, shared with handlers through `State`.
#[derive(Clone, Default)]
pub struct Effects(Arc<Mutex<HashMap<u64, u32>>>);

impl Effects {
    pub fn apply(&self, key: u64) -> u32 {
        let mut all = self.0.lock().unwrap();
        let n = all.entry(key).or_default();
        *n += 1;
        *n
    }

    pub fn of(&self, key: u64) -> u32 {
        self.0.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    pub fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}
