//! Poison queues: list, show, replay and purge the messages handlers gave up on.
//!
//! Every handler queue `<service>.<handler>` has a poison queue `<service>.<handler>.poison`
//! (DESIGN §6). A poisoned message keeps its body and headers and carries the failure
//! headers of [`choreo::envelope::headers::failure`]; a [`PoisonAdmin`] reads them back:
//!
//! - [`PoisonAdmin::list`] finds the poison queues through the broker's management API
//!   (AMQP 0-9-1 cannot list queues) and counts their messages by failure kind;
//! - [`PoisonAdmin::show`] reads messages without removing them: it takes them with manual
//!   acknowledgement and returns them all to the queue;
//! - [`PoisonAdmin::replay`] sends selected messages back to their handler's queue with the
//!   attempt count reset, publishing each with a confirm *before* acknowledging it in the
//!   poison queue, so an interrupted replay duplicates at worst and never loses;
//! - [`PoisonAdmin::purge`] deletes selected messages, or all of them.
//!
//! ```no_run
//! use choreo::FailureKind;
//! use choreo_amqp::AmqpConfig;
//! use choreo_amqp::poison::{PoisonAdmin, Selection};
//!
//! # async fn run() -> Result<(), choreo_amqp::AmqpError> {
//! let admin = PoisonAdmin::connect(AmqpConfig::from_env()).await?;
//! for queue in admin.list("billing.").await? {
//!     println!("{}: {} messages {:?}", queue.queue, queue.messages, queue.kinds);
//! }
//! // The card processor is fixed: send its permanent failures back.
//! let selection = Selection::all().kind(FailureKind::Permanent);
//! let report = admin.replay("billing.charge-card.poison", &selection, false).await?;
//! println!("replayed {}", report.replayed.len());
//! admin.close().await;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use choreo::FailureKind;
use choreo::envelope::{Rfc3339, content_id, headers, parse_rfc3339};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::config::AmqpConfig;
use crate::connection::Link;
use crate::error::{AmqpError, amqp_error};
use crate::management::Management;
use crate::topology::{Declared, short};

/// Header added to a replayed message: when it was replayed, RFC 3339 in UTC.
pub const REPLAYED_AT: &str = "choreo-replayed-at";
/// Header added to a replayed message: how many times it was replayed, in decimal.
pub const REPLAY_COUNT: &str = "choreo-replay-count";

/// The suffix of every poison queue.
pub const POISON_SUFFIX: &str = ".poison";

/// Messages published before their confirms are awaited, during a replay: the most a replay
/// interrupted at the wrong moment can duplicate.
const REPLAY_BATCH: usize = 64;

/// Headers a replay removes: the attempt count, the retry state and the failure headers.
const RESET_HEADERS: [&str; 3] = [
    headers::ATTEMPT,
    headers::RETRY_TIER,
    headers::FIRST_FAILURE,
];

/// Operator access to poison queues, over a connection of its own.
///
/// Its connection shows in the management UI as `<connection name> (poison)`.
pub struct PoisonAdmin {
    config: Arc<AmqpConfig>,
    link: Link,
    scan_limit: u32,
}

impl fmt::Debug for PoisonAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoisonAdmin")
            .field("config", &self.config)
            .field("scan_limit", &self.scan_limit)
            .finish_non_exhaustive()
    }
}

impl PoisonAdmin {
    /// Connects to the broker of `config`.
    ///
    /// # Errors
    ///
    /// [`AmqpError::Config`] for an invalid setting, and [`AmqpError::Connect`] naming the
    /// URL (password redacted) and the cause when the broker cannot be reached or refuses
    /// the credentials.
    pub async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        config.validate()?;
        let config = Arc::new(config);
        let link = Link::new(Arc::clone(&config), "poison", Arc::new(Declared::default()));
        link.open_first().await?;
        Ok(Self {
            config,
            link,
            scan_limit: 10_000,
        })
    }

    /// How many messages [`PoisonAdmin::list`] reads per queue to count them by kind.
    /// Default: 10,000; 0 counts messages without reading them.
    #[must_use]
    pub fn scan_limit(mut self, messages: u32) -> Self {
        self.scan_limit = messages;
        self
    }

    /// The poison queues whose name starts with `prefix` (`""` for all), sorted by name, with
    /// their messages counted by failure kind.
    ///
    /// The names come from the management API (the `rabbitmq_management` plugin; see
    /// [`AmqpConfig::management_url`]); the counts from the queues themselves. Counting by
    /// kind reads each queue's messages (up to the scan limit) and returns them at once, as
    /// [`PoisonAdmin::show`] does: while it runs they are briefly unavailable to others.
    /// A queue deleted while it is listed is left out.
    ///
    /// # Errors
    ///
    /// [`AmqpError::Management`] when the management API does not answer or refuses, saying
    /// how to enable it; [`AmqpError::Broker`] when the broker fails.
    pub async fn list(&self, prefix: &str) -> Result<Vec<PoisonQueue>, AmqpError> {
        let management = Management::from_config(&self.config)?;
        let mut names: Vec<String> = management
            .queue_names(self.config.connect_timeout)
            .await?
            .into_iter()
            .filter(|name| name.starts_with(prefix) && name.ends_with(POISON_SUFFIX))
            .collect();
        names.sort();
        let mut queues = Vec::with_capacity(names.len());
        for name in names {
            match self.stats(&name).await {
                Ok(stats) => queues.push(stats),
                Err(AmqpError::NoSuchQueue { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(queues)
    }

    async fn stats(&self, queue: &str) -> Result<PoisonQueue, AmqpError> {
        let channel = self.channel().await?;
        let result = async {
            let messages = ready(&channel, queue).await?;
            let mut kinds = BTreeMap::new();
            let mut held = Held::default();
            while held.count() < self.scan_limit.min(messages) {
                let Some(message) = get(&channel, queue).await? else {
                    break;
                };
                held.keep(message.delivery.delivery_tag);
                let entry =
                    PoisonMessage::read(queue, &message.delivery.properties, message.delivery.data);
                *kinds.entry(entry.kind).or_insert(0) += 1;
            }
            let scanned = held.count();
            held.return_all(&channel).await?;
            settle(&channel, queue, messages).await;
            Ok(PoisonQueue {
                handler: handler_of(queue),
                queue: queue.to_owned(),
                messages,
                kinds,
                scanned,
            })
        }
        .await;
        close(channel).await;
        result
    }

    /// The number of messages ready in `queue`.
    ///
    /// # Errors
    ///
    /// [`AmqpError::NoSuchQueue`] when it does not exist, [`AmqpError::Broker`] when the
    /// broker fails.
    pub async fn count(&self, queue: &str) -> Result<u32, AmqpError> {
        let channel = self.channel().await?;
        let count = ready(&channel, queue).await;
        close(channel).await;
        count
    }

    /// Up to `limit` messages of a poison queue, from its head, without removing them: they
    /// are taken with manual acknowledgement, read, and all returned to the queue, which
    /// holds the same messages afterwards. Their order may change: a quorum queue can put
    /// returned messages behind the others.
    ///
    /// # Errors
    ///
    /// [`AmqpError::NotAPoisonQueue`] when `queue` does not end in `.poison`,
    /// [`AmqpError::NoSuchQueue`] when it does not exist, [`AmqpError::Broker`] when the
    /// broker fails; the messages read so far return to the queue.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the messages read so far unacknowledged on a channel that
    /// is not closed until the admin is closed or dropped; then they return to the queue.
    pub async fn show(&self, queue: &str, limit: u32) -> Result<Vec<PoisonMessage>, AmqpError> {
        check_poison(queue)?;
        let channel = self.channel().await?;
        let result = async {
            let before = ready(&channel, queue).await?;
            let mut held = Held::default();
            let mut shown = Vec::new();
            let read = async {
                while held.count() < limit {
                    let Some(message) = get(&channel, queue).await? else {
                        break;
                    };
                    held.keep(message.delivery.delivery_tag);
                    shown.push(PoisonMessage::read(
                        queue,
                        &message.delivery.properties,
                        message.delivery.data,
                    ));
                }
                Ok::<_, AmqpError>(())
            }
            .await;
            held.return_all(&channel).await?;
            settle(&channel, queue, before).await;
            read.map(|()| shown)
        }
        .await;
        close(channel).await;
        result
    }

    /// Moves the messages of `queue` that `selection` picks back to their handler's queue
    /// (the `choreo-failure-handler` header names it; else the poison queue's name without
    /// `.poison`), through the default exchange.
    ///
    /// Each message keeps its body, properties and headers except the attempt count, the
    /// retry state and the failure headers, which are removed, so the handler runs it as a
    /// new message with its full retry budget; it gains [`REPLAYED_AT`] and
    /// [`REPLAY_COUNT`]. Messages are published in batches, and each is acknowledged in the
    /// poison queue only once the broker confirmed its copy: if the replay is interrupted
    /// (a crash, a closed connection), a message is in the poison queue, in the handler
    /// queue, or at worst in both — never in neither. Messages not selected stay in the
    /// poison queue. With `dry_run`, nothing moves and the report says what would.
    ///
    /// A message whose handler queue does not exist stays in the poison queue and is
    /// reported in [`ReplayReport::failed`].
    ///
    /// # Errors
    ///
    /// [`AmqpError::NotAPoisonQueue`], [`AmqpError::NoSuchQueue`]; [`AmqpError::Broker`] or
    /// [`AmqpError::PublishTimeout`] when the broker fails mid-way, after which the messages
    /// not yet confirmed are back in the poison queue.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is an interruption like any other: nothing is lost, and messages
    /// of the batch in flight may be in both queues.
    pub async fn replay(
        &self,
        queue: &str,
        selection: &Selection,
        dry_run: bool,
    ) -> Result<ReplayReport, AmqpError> {
        check_poison(queue)?;
        let channel = self.channel().await?;
        let publish = if dry_run {
            None
        } else {
            let publish = self.channel().await?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| AmqpError::broker("enabling publisher confirms", e))?;
            Some(publish)
        };
        let mut held = Held::default();
        let mut report = ReplayReport {
            queue: queue.to_owned(),
            dry_run,
            replayed: Vec::new(),
            failed: Vec::new(),
            left: 0,
        };
        let mut before = None;
        let result = match ready(&channel, queue).await {
            Ok(count) => {
                before = Some(count);
                self.replay_on(
                    &channel,
                    publish.as_ref(),
                    queue,
                    selection,
                    &mut held,
                    &mut report,
                )
                .await
            }
            Err(error) => Err(error),
        };
        // Whatever happened, hand back what was read and not moved.
        let returned = held.return_all(&channel).await;
        if let (Some(before), Ok(())) = (before, &result) {
            let moved = if dry_run { 0 } else { report.replayed.len() };
            let moved = u32::try_from(moved).unwrap_or(u32::MAX);
            report.left = settle(&channel, queue, before.saturating_sub(moved)).await;
        }
        close(channel).await;
        if let Some(publish) = publish {
            close(publish).await;
        }
        result.and(returned).map(|()| report)
    }

    async fn replay_on(
        &self,
        channel: &Channel,
        publish: Option<&Channel>,
        queue: &str,
        selection: &Selection,
        held: &mut Held,
        report: &mut ReplayReport,
    ) -> Result<(), AmqpError> {
        let mut scan = Scan::new(selection);
        while !scan.finished {
            let mut batch = Vec::new();
            while batch.len() < REPLAY_BATCH {
                let Some((tag, entry, properties)) = scan.next(channel, queue, held).await? else {
                    break;
                };
                batch.push((tag, entry, properties));
            }
            let Some(publish) = publish else {
                for (tag, entry, _) in batch {
                    held.keep(tag);
                    report.replayed.push(Replayed::from(&entry));
                }
                continue;
            };
            let mut confirms = Vec::with_capacity(batch.len());
            for (tag, entry, properties) in batch {
                let confirm = publish
                    .basic_publish(
                        ShortString::from(""),
                        short(&entry.handler)?,
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &entry.body,
                        replayed_properties(&properties, entry.replays + 1),
                    )
                    .await
                    .map_err(|e| {
                        AmqpError::broker(format!("replaying to `{}`", entry.handler), e)
                    })?;
                confirms.push((tag, entry, confirm));
            }
            for (tag, entry, confirm) in confirms {
                let waited = tokio::time::timeout(self.config.confirm_timeout, confirm).await;
                let confirmation = match waited {
                    Ok(confirmation) => {
                        confirmation.map_err(|e| AmqpError::broker("waiting for the confirm", e))?
                    }
                    Err(_) => {
                        return Err(AmqpError::PublishTimeout {
                            routing_key: entry.handler.clone(),
                            waited: self.config.confirm_timeout,
                            last_error: "no confirm from the broker".to_owned(),
                        });
                    }
                };
                match confirmation {
                    Confirmation::Ack(None) => {
                        channel
                            .basic_ack(tag, BasicAckOptions::default())
                            .await
                            .map_err(|e| {
                                AmqpError::broker("acknowledging a replayed message", e)
                            })?;
                        report.replayed.push(Replayed::from(&entry));
                    }
                    Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                        held.keep(tag);
                        report.failed.push(NotReplayed::new(
                            &entry,
                            format!("handler queue `{}` does not exist", entry.handler),
                        ));
                    }
                    Confirmation::Nack(None) | Confirmation::NotRequested => {
                        held.keep(tag);
                        report.failed.push(NotReplayed::new(
                            &entry,
                            "the broker refused the copy (nack)".to_owned(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes the messages of `queue` that `selection` picks; with [`Selection::all`], every
    /// message, at once (`queue.purge`).
    ///
    /// # Errors
    ///
    /// [`AmqpError::NotAPoisonQueue`], [`AmqpError::NoSuchQueue`], [`AmqpError::Broker`];
    /// messages read and not deleted return to the queue.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps what was deleted deleted; every other message read returns
    /// to the queue.
    pub async fn purge(
        &self,
        queue: &str,
        selection: &Selection,
    ) -> Result<PurgeReport, AmqpError> {
        check_poison(queue)?;
        let channel = self.channel().await?;
        let mut report = PurgeReport {
            queue: queue.to_owned(),
            purged: 0,
            ids: Vec::new(),
            left: 0,
        };
        let mut held = Held::default();
        let mut before = 0;
        let result = async {
            before = ready(&channel, queue).await?;
            if selection.is_all() {
                report.purged = channel
                    .queue_purge(short(queue)?, QueuePurgeOptions::default())
                    .await
                    .map_err(|e| not_found_or(e, queue, "purging"))?;
                return Ok(());
            }
            let mut scan = Scan::new(selection);
            while let Some((tag, entry, _)) = scan.next(&channel, queue, &mut held).await? {
                channel
                    .basic_ack(tag, BasicAckOptions::default())
                    .await
                    .map_err(|e| AmqpError::broker("deleting a message", e))?;
                report.purged += 1;
                report.ids.push(entry.id);
            }
            Ok(())
        }
        .await;
        let returned = held.return_all(&channel).await;
        if result.is_ok() {
            report.left = settle(&channel, queue, before.saturating_sub(report.purged)).await;
        }
        close(channel).await;
        result.and(returned).map(|()| report)
    }

    /// Closes the connection. Messages read and not settled return to their queues.
    pub async fn close(&self) {
        self.link.close().await;
    }

    async fn channel(&self) -> Result<Channel, AmqpError> {
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        let current = self.link.get(Some(deadline)).await?;
        open_channel(&current.connection).await
    }
}

async fn open_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::broker("opening a channel", e))
}

async fn close(channel: Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
}

fn check_poison(queue: &str) -> Result<(), AmqpError> {
    if queue.ends_with(POISON_SUFFIX) && queue.len() > POISON_SUFFIX.len() {
        Ok(())
    } else {
        Err(AmqpError::NotAPoisonQueue {
            queue: queue.to_owned(),
        })
    }
}

/// The handler queue a poison queue belongs to.
fn handler_of(queue: &str) -> String {
    queue
        .strip_suffix(POISON_SUFFIX)
        .unwrap_or(queue)
        .to_owned()
}

/// The messages ready in `queue`, or [`AmqpError::NoSuchQueue`].
async fn ready(channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
    channel
        .queue_declare(
            short(queue)?,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|declared| declared.message_count())
        .map_err(|e| not_found_or(e, queue, "inspecting"))
}

fn not_found_or(error: lapin::Error, queue: &str, doing: &str) -> AmqpError {
    let not_found = amqp_error(&error)
        .is_some_and(|e| matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)));
    if not_found {
        AmqpError::NoSuchQueue {
            queue: queue.to_owned(),
        }
    } else {
        AmqpError::broker(format!("{doing} queue `{queue}`"), error)
    }
}

async fn get(
    channel: &Channel,
    queue: &str,
) -> Result<Option<lapin::message::BasicGetMessage>, AmqpError> {
    channel
        .basic_get(short(queue)?, BasicGetOptions { no_ack: false })
        .await
        .map_err(|e| not_found_or(e, queue, "reading"))
}

/// Waits, for up to two seconds, until `queue` holds at least `expected` ready messages
/// again; returns the last count.
///
/// A quorum queue applies returned messages after the `basic.nack` that returned them, so
/// a count taken at once can miss them; waiting here means that once an operation returns,
/// the queue shows every message it did not remove. Others removing messages meanwhile only
/// make it wait the full two seconds.
async fn settle(channel: &Channel, queue: &str, expected: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match ready(channel, queue).await {
            Ok(count) if count < expected && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(count) => return count,
            Err(_) => return expected,
        }
    }
}

/// Delivery tags read and neither acknowledged nor returned yet.
#[derive(Default)]
struct Held {
    tags: Vec<u64>,
}

impl Held {
    fn keep(&mut self, tag: u64) {
        self.tags.push(tag);
    }

    fn count(&self) -> u32 {
        u32::try_from(self.tags.len()).unwrap_or(u32::MAX)
    }

    /// Returns every held message to the queue, in one `basic.nack` with `multiple`: the
    /// highest held tag covers every lower one still outstanding, and only held ones are.
    async fn return_all(&mut self, channel: &Channel) -> Result<(), AmqpError> {
        let Some(&highest) = self.tags.iter().max() else {
            return Ok(());
        };
        self.tags.clear();
        if !channel.status().connected() {
            // The broker returns a closed channel's messages on its own.
            return Ok(());
        }
        channel
            .basic_nack(
                highest,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .map_err(|e| AmqpError::broker("returning messages to the queue", e))
    }
}

/// One pass over a queue, yielding the messages a selection picks and holding the others.
struct Scan<'a> {
    selection: &'a Selection,
    ids_left: BTreeSet<&'a str>,
    finished: bool,
}

impl<'a> Scan<'a> {
    fn new(selection: &'a Selection) -> Self {
        Self {
            selection,
            ids_left: selection.ids.iter().map(String::as_str).collect(),
            finished: false,
        }
    }

    /// The next selected message: its delivery tag, what it says and its properties. `None`
    /// once the queue is exhausted, or every selected id was found.
    async fn next(
        &mut self,
        channel: &Channel,
        queue: &str,
        held: &mut Held,
    ) -> Result<Option<(u64, PoisonMessage, BasicProperties)>, AmqpError> {
        while !self.finished {
            let Some(message) = get(channel, queue).await? else {
                self.finished = true;
                break;
            };
            let delivery = message.delivery;
            let entry = PoisonMessage::read(queue, &delivery.properties, delivery.data);
            if !self.selection.matches(&entry) {
                held.keep(delivery.delivery_tag);
                continue;
            }
            if !self.selection.ids.is_empty() {
                self.ids_left.remove(entry.id.as_str());
                self.finished = self.ids_left.is_empty();
            }
            return Ok(Some((delivery.delivery_tag, entry, delivery.properties)));
        }
        Ok(None)
    }
}

/// The properties of a replayed copy: the original ones without the attempt count, retry
/// state and failure headers, plus the replay headers.
fn replayed_properties(original: &BasicProperties, replays: u32) -> BasicProperties {
    let mut table: BTreeMap<ShortString, AMQPValue> = original
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    table.retain(|name, _| {
        let name = name.as_str();
        !RESET_HEADERS.contains(&name) && !headers::failure::ALL.contains(&name)
    });
    let text = |value: String| AMQPValue::LongString(LongString::from(value));
    table.insert(
        REPLAYED_AT.into(),
        text(Rfc3339(SystemTime::now()).to_string()),
    );
    table.insert(REPLAY_COUNT.into(), text(replays.to_string()));
    original.clone().with_headers(FieldTable::from(table))
}

/// Which messages of a poison queue an operation applies to. Criteria combine: a message
/// must meet all of them. No criteria select every message.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use choreo::FailureKind;
/// use choreo_amqp::poison::Selection;
///
/// let recent_decode_failures = Selection::all()
///     .kind(FailureKind::Decode)
///     .since(SystemTime::now() - Duration::from_secs(3600));
/// assert!(!recent_decode_failures.is_all());
/// assert!(Selection::all().is_all());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    ids: BTreeSet<String>,
    kind: Option<FailureKind>,
    since: Option<SystemTime>,
}

impl Selection {
    /// Every message.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only the message with this id (the `message_id` property, as [`PoisonMessage::id`]
    /// shows it). Several calls select several ids.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.ids.insert(id.into());
        self
    }

    /// Only messages poisoned with this kind.
    #[must_use]
    pub fn kind(mut self, kind: FailureKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Only messages whose last failure was at `time` or later.
    #[must_use]
    pub fn since(mut self, time: SystemTime) -> Self {
        self.since = Some(time);
        self
    }

    /// Whether this selects every message.
    pub fn is_all(&self) -> bool {
        self.ids.is_empty() && self.kind.is_none() && self.since.is_none()
    }

    /// Whether `message` is selected.
    pub fn matches(&self, message: &PoisonMessage) -> bool {
        (self.ids.is_empty() || self.ids.contains(&message.id))
            && self.kind.is_none_or(|kind| message.kind == kind.as_str())
            && self
                .since
                .is_none_or(|since| message.last_failed_at.is_some_and(|last| last >= since))
    }
}

/// A poison queue and what is in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PoisonQueue {
    /// The poison queue, `<service>.<handler>.poison`.
    pub queue: String,
    /// The handler queue it belongs to, `<service>.<handler>`.
    pub handler: String,
    /// Messages ready in it.
    pub messages: u32,
    /// Messages by failure kind, among the first `scanned`.
    pub kinds: BTreeMap<String, u32>,
    /// How many messages were read to count kinds: fewer than `messages` when the queue is
    /// longer than the scan limit.
    pub scanned: u32,
}

/// A poisoned message as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoisonMessage {
    /// The message id: the `message_id` property, else the `ce-id` header, else the id the
    /// runtime derives from its routing key and body.
    pub id: String,
    /// The event name, when the message says.
    pub event: Option<String>,
    /// The event version, when the message says.
    pub version: Option<u32>,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// The handler queue it is replayed to.
    pub handler: String,
    /// The failure kind (a [`FailureKind`] value); for a message the broker dead-lettered
    /// without choreo's headers, the broker's reason (`delivery_limit`), else `unknown`.
    pub kind: String,
    /// The last error.
    pub error: Option<String>,
    /// Failed runs of the handler.
    pub attempts: Option<u32>,
    /// The first failure.
    pub first_failed_at: Option<SystemTime>,
    /// The last failure.
    pub last_failed_at: Option<SystemTime>,
    /// The exchange it was published to.
    pub exchange: Option<String>,
    /// The routing key it was published with.
    pub routing_key: Option<String>,
    /// How many times it was replayed before.
    pub replays: u32,
    /// The body, as it came.
    pub body: Vec<u8>,
}

impl PoisonMessage {
    fn read(queue: &str, properties: &BasicProperties, body: Vec<u8>) -> Self {
        use headers::failure;
        let empty = FieldTable::default();
        let table = properties.headers().as_ref().unwrap_or(&empty);
        let header = |name: &str| table.inner().get(name).and_then(text);
        let property = |value: &Option<ShortString>| value.as_ref().map(|v| v.as_str().to_owned());
        let routing_key = header(failure::ROUTING_KEY).filter(|k| !k.is_empty());
        let id = property(properties.message_id())
            .or_else(|| header(headers::ID))
            .unwrap_or_else(|| {
                let key = routing_key.as_deref().unwrap_or_default();
                content_id(&[key.as_bytes(), &body]).to_string()
            });
        let version = header(headers::VERSION)
            .and_then(|v| v.parse().ok())
            .or_else(|| {
                let (_, version) = routing_key.as_deref()?.rsplit_once(".v")?;
                version.parse().ok()
            });
        Self {
            id,
            event: property(properties.kind()).or_else(|| header(headers::TYPE)),
            version,
            correlation_id: property(properties.correlation_id())
                .or_else(|| header(headers::CORRELATION_ID)),
            handler: header(failure::HANDLER)
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| handler_of(queue)),
            kind: header(failure::KIND)
                .or_else(|| header("x-first-death-reason"))
                .unwrap_or_else(|| "unknown".to_owned()),
            error: header(failure::MESSAGE),
            attempts: header(failure::ATTEMPTS).and_then(|a| a.parse().ok()),
            first_failed_at: header(failure::FIRST_AT).and_then(|t| parse_rfc3339(&t)),
            last_failed_at: header(failure::LAST_AT).and_then(|t| parse_rfc3339(&t)),
            exchange: header(failure::EXCHANGE),
            routing_key,
            replays: header(REPLAY_COUNT)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            body,
        }
    }

    /// The body for a reader: pretty-printed when it is JSON, else as text (invalid UTF-8
    /// replaced).
    pub fn body_text(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|json| serde_json::to_string_pretty(&json).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// Times as RFC 3339; the body as JSON when it is JSON, else as a string.
impl Serialize for PoisonMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let time = |t: Option<SystemTime>| t.map(|t| Rfc3339(t).to_string());
        let mut s = serializer.serialize_struct("PoisonMessage", 14)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("event", &self.event)?;
        s.serialize_field("version", &self.version)?;
        s.serialize_field("correlation_id", &self.correlation_id)?;
        s.serialize_field("handler", &self.handler)?;
        s.serialize_field("kind", &self.kind)?;
        s.serialize_field("error", &self.error)?;
        s.serialize_field("attempts", &self.attempts)?;
        s.serialize_field("first_failed_at", &time(self.first_failed_at))?;
        s.serialize_field("last_failed_at", &time(self.last_failed_at))?;
        s.serialize_field("exchange", &self.exchange)?;
        s.serialize_field("routing_key", &self.routing_key)?;
        s.serialize_field("replays", &self.replays)?;
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(json) => s.serialize_field("body", &json)?,
            Err(_) => s.serialize_field("body", &String::from_utf8_lossy(&self.body))?,
        }
        s.end()
    }
}

/// What a replay moved, or would move.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The poison queue.
    pub queue: String,
    /// Whether nothing was moved: `replayed` lists what would have been.
    pub dry_run: bool,
    /// The messages sent back to their handler queue.
    pub replayed: Vec<Replayed>,
    /// Selected messages that stayed in the poison queue, and why.
    pub failed: Vec<NotReplayed>,
    /// Messages in the poison queue afterwards.
    pub left: u32,
}

/// A message a replay sent back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Replayed {
    /// The message id.
    pub id: String,
    /// The handler queue it went to.
    pub handler: String,
    /// Its failure kind.
    pub kind: String,
}

impl From<&PoisonMessage> for Replayed {
    fn from(message: &PoisonMessage) -> Self {
        Self {
            id: message.id.clone(),
            handler: message.handler.clone(),
            kind: message.kind.clone(),
        }
    }
}

/// A selected message a replay could not send back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NotReplayed {
    /// The message id.
    pub id: String,
    /// The handler queue it was meant for.
    pub handler: String,
    /// Why it stayed.
    pub reason: String,
}

impl NotReplayed {
    fn new(message: &PoisonMessage, reason: String) -> Self {
        Self {
            id: message.id.clone(),
            handler: message.handler.clone(),
            reason,
        }
    }
}

/// What a purge deleted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PurgeReport {
    /// The poison queue.
    pub queue: String,
    /// How many messages were deleted.
    pub purged: u32,
    /// Their ids; empty when the whole queue was purged at once.
    pub ids: Vec<String>,
    /// Messages in the poison queue afterwards.
    pub left: u32,
}

/// A header as text, whatever type it was written with.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned() -> BasicProperties {
        use headers::failure;
        let mut table = FieldTable::default();
        let mut put = |name: &str, value: &str| {
            table.insert(name.into(), AMQPValue::LongString(value.into()));
        };
        put(failure::HANDLER, "billing.charge-card");
        put(failure::KIND, "permanent");
        put(failure::MESSAGE, "card declined");
        put(failure::ATTEMPTS, "1");
        put(failure::FIRST_AT, "2026-11-26T05:31:43.123Z");
        put(failure::LAST_AT, "2026-11-26T05:31:44.000Z");
        put(failure::EXCHANGE, "orders");
        put(failure::ROUTING_KEY, "orders.order-placed.v2");
        put(headers::FIRST_FAILURE, "2026-11-26T05:31:43.123Z");
        put(
            headers::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        table.insert(headers::ATTEMPT.into(), AMQPValue::LongUInt(3));
        table.insert(headers::RETRY_TIER.into(), AMQPValue::LongUInt(1));
        table.insert(headers::VERSION.into(), AMQPValue::LongUInt(2));
        BasicProperties::default()
            .with_message_id("0193e3c4-0000-7000-8000-000000000001".into())
            .with_type("orders.order-placed".into())
            .with_headers(table)
    }

    #[test]
    fn failure_headers_are_read() {
        let m = PoisonMessage::read(
            "billing.charge-card.poison",
            &poisoned(),
            br#"{"order_id":7}"#.to_vec(),
        );
        assert_eq!(m.id, "0193e3c4-0000-7000-8000-000000000001");
        assert_eq!(
            (m.event.as_deref(), m.version),
            (Some("orders.order-placed"), Some(2))
        );
        assert_eq!(m.handler, "billing.charge-card");
        assert_eq!(m.kind, "permanent");
        assert_eq!(m.error.as_deref(), Some("card declined"));
        assert_eq!(m.attempts, Some(1));
        assert_eq!(m.last_failed_at, parse_rfc3339("2026-11-26T05:31:44.000Z"));
        assert!(m.first_failed_at.unwrap() < m.last_failed_at.unwrap());
        assert_eq!(m.routing_key.as_deref(), Some("orders.order-placed.v2"));
        assert_eq!(m.replays, 0);
        assert_eq!(m.body_text(), "{\n  \"order_id\": 7\n}");
    }

    #[test]
    fn a_message_without_headers_still_reads() {
        let m = PoisonMessage::read(
            "a.b.poison",
            &BasicProperties::default(),
            b"\xffnot json".to_vec(),
        );
        assert_eq!(m.handler, "a.b");
        assert_eq!(m.kind, "unknown");
        assert_eq!(m.body_text(), "\u{fffd}not json");
        assert_eq!(m.id.len(), 36, "a derived id: {}", m.id);
    }

    #[test]
    fn replayed_copies_lose_the_attempt_count_and_failure_headers() {
        let properties = replayed_properties(&poisoned(), 2);
        let table = properties.headers().clone().unwrap();
        let names: Vec<&str> = table.inner().keys().map(ShortString::as_str).collect();
        for gone in RESET_HEADERS.iter().chain(&headers::failure::ALL) {
            assert!(!names.contains(gone), "{gone} removed: {names:?}");
        }
        for kept in [headers::TRACEPARENT, headers::VERSION, REPLAYED_AT] {
            assert!(names.contains(&kept), "{kept} kept: {names:?}");
        }
        assert_eq!(
            table.inner().get(REPLAY_COUNT).and_then(text).as_deref(),
            Some("2")
        );
        assert_eq!(
            properties.message_id().as_ref().unwrap().as_str(),
            "0193e3c4-0000-7000-8000-000000000001"
        );
    }

    #[test]
    fn selections_combine() {
        let m = PoisonMessage::read("q.h.poison", &poisoned(), Vec::new());
        let last = m.last_failed_at.unwrap();
        assert!(Selection::all().matches(&m));
        assert!(Selection::all().id(&m.id).id("other").matches(&m));
        assert!(!Selection::all().id("other").matches(&m));
        assert!(Selection::all().kind(FailureKind::Permanent).matches(&m));
        assert!(!Selection::all().kind(FailureKind::Decode).matches(&m));
        assert!(Selection::all().since(last).matches(&m));
        assert!(
            !Selection::all()
                .since(last + Duration::from_millis(1))
                .matches(&m)
        );
        assert!(
            !Selection::all()
                .kind(FailureKind::Permanent)
                .since(last + Duration::from_secs(1))
                .matches(&m)
        );
    }

    #[test]
    fn only_poison_queues() {
        assert!(check_poison("billing.charge-card.poison").is_ok());
        for bad in ["billing.charge-card", ".poison", "billing.poison.retry.1s"] {
            let error = check_poison(bad).unwrap_err().to_string();
            assert!(error.contains("not a poison queue"), "{error}");
        }
    }
}
