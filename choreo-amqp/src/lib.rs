//! RabbitMQ transport for [`choreo`].
//!
//! This crate will carry the RabbitMQ implementation of [`choreo::Transport`]: topology
//! declaration, publisher confirms, retry tiers, poison queues and connection recovery.
//! Services written against `choreo` run on it unchanged.
