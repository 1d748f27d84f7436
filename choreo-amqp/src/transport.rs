//! The [`Transport`] implementation.

use std::fmt;
use std::sync::Arc;

use choreo::transport::{QueueSpec, Topology, Transport};
use choreo::{Message, Publisher, TransportError};
use tokio::task::JoinSet;

use crate::config::AmqpConfig;
use crate::connection::Link;
use crate::consumer::AmqpConsumer;
use crate::error::AmqpError;
use crate::publisher::{Publishing, Target};
use crate::topology::{self, Declared};
use crate::wire;

/// Services on RabbitMQ.
///
/// One connection publishes and another consumes, as RabbitMQ recommends: a publisher
/// throttled by flow control never holds up acknowledgements. Both replace themselves when
/// they fail. Clones share the connections.
///
/// ```no_run
/// use choreo::Service;
/// use choreo_amqp::{AmqpConfig, AmqpTransport};
///
/// # async fn run(billing: Service) -> Result<(), Box<dyn std::error::Error>> {
/// let transport = AmqpTransport::connect(AmqpConfig::from_env()).await?;
/// billing.run_until(&transport, tokio::signal::ctrl_c()).await?;
/// transport.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AmqpTransport {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: Arc<AmqpConfig>,
    pub(crate) publishing: Publishing,
    pub(crate) consume: Link,
    declared: Arc<Declared>,
}

impl AmqpTransport {
    /// Connects to the broker.
    ///
    /// # Errors
    ///
    /// [`AmqpError::Config`] for an invalid setting, and [`AmqpError::Connect`] naming the
    /// URL (password redacted) and the cause when the broker cannot be reached or refuses
    /// the credentials.
    pub async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        config.validate()?;
        let config = Arc::new(config);
        let declared = Arc::new(Declared::default());
        let publish = Link::new(Arc::clone(&config), "publish", Arc::clone(&declared));
        let consume = Link::new(Arc::clone(&config), "consume", Arc::clone(&declared));
        publish.open_first().await?;
        consume.open_first().await?;
        tracing::info!(url = %config.redacted_url(), "connected to RabbitMQ");
        Ok(Self {
            shared: Arc::new(Shared {
                publishing: Publishing::new(publish, Arc::clone(&config)),
                consume,
                config,
                declared,
            }),
        })
    }

    /// A publisher for events from outside a handler, e.g. a web request.
    pub fn publisher(&self, source: impl Into<Arc<str>>) -> Publisher<Self> {
        Publisher::new(self.clone(), source)
    }

    /// The configuration.
    pub fn config(&self) -> &AmqpConfig {
        &self.shared.config
    }

    /// Deletes the queues of `topology` — handler, retry tiers and poison — and forgets it.
    /// Exchanges stay: other services may use them. For tests and tear-down.
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached or refuses.
    pub async fn delete_queues(&self, topology: &Topology) -> Result<(), AmqpError> {
        self.shared.declared.forget(topology);
        let current = self.shared.consume.get(Some(self.deadline())).await?;
        topology::delete(&current.connection, topology).await
    }

    /// Deletes the exchange of `domain`. For tests and tear-down.
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached or refuses.
    pub async fn delete_exchange(&self, domain: &str) -> Result<(), AmqpError> {
        let current = self.shared.consume.get(Some(self.deadline())).await?;
        topology::delete_exchange(&current.connection, &self.shared.config.exchange(domain)).await
    }

    /// Closes both connections. Deliveries not yet settled return to their queues.
    pub async fn close(&self) {
        self.shared.publishing.link.close().await;
        self.shared.consume.close().await;
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.shared.config.publish_timeout
    }
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Transport for AmqpTransport {
    type Consumer = AmqpConsumer;

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        let current = self.shared.consume.get(Some(self.deadline())).await?;
        topology::declare(&current.connection, topology, &self.shared.config).await?;
        self.shared.declared.remember(topology);
        Ok(())
    }

    async fn publish(&self, message: Message) -> Result<(), TransportError> {
        let exchange = self.shared.config.exchange(message.meta.domain());
        let routing_key = message.meta.routing_key();
        self.shared
            .publishing
            .publish(
                Target {
                    exchange: &exchange,
                    routing_key: &routing_key,
                    mandatory: self.shared.config.mandatory,
                    limit_body: true,
                },
                || wire::envelope_properties(&message),
                &message.body,
            )
            .await
            .map_err(Into::into)
    }

    /// Publishes every message at once and waits for all the confirms.
    async fn publish_all(&self, messages: Vec<Message>) -> Result<(), TransportError> {
        if messages.len() <= 1 {
            for message in messages {
                self.publish(message).await?;
            }
            return Ok(());
        }
        let mut pending = JoinSet::new();
        for message in messages {
            let transport = self.clone();
            pending.spawn(async move { transport.publish(message).await });
        }
        let mut first_error = None;
        while let Some(joined) = pending.join_next().await {
            let result = joined.unwrap_or_else(|panic| {
                Err(TransportError::Other {
                    message: format!("publishing task failed: {panic}"),
                    source: None,
                })
            });
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn consume(&self, queue: &QueueSpec) -> Result<AmqpConsumer, TransportError> {
        Ok(AmqpConsumer::new(Arc::clone(&self.shared), queue))
    }

    fn is_connected(&self) -> bool {
        self.shared.publishing.link.is_live() && self.shared.consume.is_live()
    }
}
