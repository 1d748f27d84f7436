//! Connections that replace themselves.
//!
//! A [`Link`] owns one AMQP connection at a time. Whoever finds it broken — a failed
//! publish, a confirm that never came, a consumer stream that ended — reports the
//! generation it used, and the next caller opens a fresh connection, with backoff, and
//! redeclares the topology before anything else uses it. lapin's own recovery is not used:
//! a connection that does not come back is replaced, never waited on forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::AmqpConfig;
use crate::error::{AmqpError, describe_connect};
use crate::topology::Declared;

/// One role's connection (publishing or consuming) and how to get a new one.
pub(crate) struct Link {
    config: Arc<AmqpConfig>,
    role: &'static str,
    declared: Arc<Declared>,
    /// The connection in use, read on every publish and consume.
    current: RwLock<Option<Current>>,
    /// Held while a connection is being replaced, so only one caller reconnects.
    reconnecting: Mutex<()>,
    generations: AtomicU64,
    closed: AtomicBool,
}

#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) connection: Arc<Connection>,
    pub(crate) generation: u64,
    /// Set when someone found the connection broken, whatever its status still says.
    dead: Arc<AtomicBool>,
}

impl Current {
    fn new(connection: Connection, generation: u64) -> Self {
        Self {
            connection: Arc::new(connection),
            generation,
            dead: Arc::default(),
        }
    }

    fn is_live(&self) -> bool {
        !self.dead.load(Ordering::SeqCst) && self.connection.status().connected()
    }
}

impl Link {
    pub(crate) fn new(
        config: Arc<AmqpConfig>,
        role: &'static str,
        declared: Arc<Declared>,
    ) -> Self {
        Self {
            config,
            role,
            declared,
            current: RwLock::new(None),
            reconnecting: Mutex::new(()),
            generations: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        }
    }

    /// Opens the first connection: one attempt, and a clear error naming the URL if it fails.
    pub(crate) async fn open_first(&self) -> Result<(), AmqpError> {
        let connection = self.open().await?;
        self.set(Some(Current::new(connection, 1)));
        Ok(())
    }

    fn live(&self) -> Option<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|c| c.is_live())
            .cloned()
    }

    fn set(&self, current: Option<Current>) -> Option<Current> {
        std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            current,
        )
    }

    /// The live connection, reconnecting (with backoff) until `deadline` if it is broken.
    pub(crate) async fn get(&self, deadline: Option<Instant>) -> Result<Current, AmqpError> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let mut pause = self.config.reconnect_min;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(AmqpError::Closed);
            }
            let guard = self.reconnecting.lock().await;
            if let Some(live) = self.live() {
                return Ok(live);
            }
            let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(dead) = self.set(None) {
                tracing::warn!(
                    role = self.role,
                    generation = dead.generation,
                    "connection lost; reconnecting"
                );
                close_quietly(&dead.connection).await;
            }
            let error = match self.open().await {
                Ok(connection) => match self.declared.redeclare(&connection, &self.config).await {
                    Ok(()) => {
                        tracing::info!(role = self.role, generation, "connected");
                        let live = Current::new(connection, generation);
                        self.set(Some(live.clone()));
                        return Ok(live);
                    }
                    Err(error) => {
                        close_quietly(&connection).await;
                        error
                    }
                },
                Err(error) => error,
            };
            drop(guard);
            let now = Instant::now();
            if deadline.is_some_and(|d| now + pause > d) {
                return Err(error);
            }
            tracing::debug!(role = self.role, %error, ?pause, "reconnect failed; backing off");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.config.reconnect_max);
        }
    }

    /// Whether the link has a live connection right now.
    pub(crate) fn is_live(&self) -> bool {
        self.live().is_some()
    }

    /// Reports the connection of `generation` broken; the next [`Link::get`] replaces it.
    pub(crate) async fn broken(&self, generation: u64) {
        let dead = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            current
                .as_ref()
                .filter(|c| c.generation == generation)
                .cloned()
        };
        if let Some(dead) = dead {
            if !dead.dead.swap(true, Ordering::SeqCst) {
                tracing::warn!(role = self.role, generation, "replacing connection");
                close_quietly(&dead.connection).await;
            }
        }
    }

    /// Closes the connection for good.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(current) = self.set(None) {
            close_quietly(&current.connection).await;
        }
    }

    async fn open(&self) -> Result<Connection, AmqpError> {
        let properties = ConnectionProperties::default().with_connection_name(
            format!("{} ({})", self.config.connection_name, self.role).into(),
        );
        let runtime = lapin::runtime::default_runtime().map_err(|error| AmqpError::Connect {
            url: self.config.redacted_url(),
            reason: "no tokio runtime to connect from".to_owned(),
            source: Some(Box::new(error)),
        })?;
        let connect = Connection::connect_with_config(
            &self.config.url,
            properties,
            self.config.tls.clone(),
            runtime,
        );
        match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(AmqpError::Connect {
                url: self.config.redacted_url(),
                reason: describe_connect(&error),
                source: Some(Box::new(error)),
            }),
            Err(_) => Err(AmqpError::Connect {
                url: self.config.redacted_url(),
                reason: format!("no answer within {:?}", self.config.connect_timeout),
                source: None,
            }),
        }
    }
}

/// Closes a connection, giving up after a second: a dead peer must not hang us.
async fn close_quietly(connection: &Connection) {
    if connection.status().connected() {
        let close = connection.close(200, "choreo: replacing connection".into());
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    }
}
