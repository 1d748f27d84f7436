//! Coalesced acknowledgements for one consumer channel.
//!
//! Acknowledging every message on its own costs the client and the broker a frame each. A
//! channel's [`Acks`] keeps at most one flush in flight: messages finished meanwhile go out
//! together as one `multiple` ack of the contiguous run of finished delivery tags. A tag
//! settled any other way — moved to a retry tier or poison queue, or returned — leaves the
//! run only once its own frame is sent, so a `multiple` ack never covers a message that is
//! still being handled or moved.
//!
//! An acknowledgement can therefore return before its frame is on the wire. If the channel
//! dies first, the broker redelivers the message and the handler's idempotency absorbs it,
//! exactly as for an acknowledgement lost in flight.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use lapin::Channel;
use lapin::options::BasicAckOptions;

pub(crate) struct Acks {
    channel: Channel,
    /// Finished tags held behind a slow one that are acknowledged one by one instead, so
    /// they do not use up the prefetch.
    limit: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Delivered and not yet acknowledged or settled otherwise, in tag order.
    outstanding: BTreeSet<u64>,
    /// Finished and waiting for their acknowledgement to be sent.
    finished: BTreeSet<u64>,
    flushing: bool,
}

impl Acks {
    pub(crate) fn new(channel: Channel, prefetch: u16) -> Self {
        Self {
            channel,
            limit: usize::from(prefetch / 2).max(1),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tracks a tag handed to the service.
    pub(crate) fn delivered(&self, tag: u64) {
        self.lock().outstanding.insert(tag);
    }

    /// Forgets a tag whose own ack or nack has been sent.
    pub(crate) fn settled_elsewhere(&self, tag: u64) {
        let mut state = self.lock();
        state.outstanding.remove(&tag);
        state.finished.remove(&tag);
    }

    /// Acknowledges `tag`, together with whatever else has finished.
    pub(crate) async fn ack(&self, tag: u64) -> Result<(), lapin::Error> {
        {
            let mut state = self.lock();
            state.finished.insert(tag);
            if state.flushing {
                // The flush in flight picks it up.
                return Ok(());
            }
            state.flushing = true;
        }
        let flushed = self.flush().await;
        if flushed.is_err() {
            self.lock().flushing = false;
        }
        flushed
    }

    async fn flush(&self) -> Result<(), lapin::Error> {
        loop {
            let (upto, singles) = {
                let mut state = self.lock();
                let mut upto = None;
                while let Some(&first) = state.outstanding.first() {
                    if !state.finished.remove(&first) {
                        break;
                    }
                    state.outstanding.pop_first();
                    upto = Some(first);
                }
                let singles: Vec<u64> = if state.finished.len() >= self.limit {
                    let held = std::mem::take(&mut state.finished);
                    for tag in &held {
                        state.outstanding.remove(tag);
                    }
                    held.into_iter().collect()
                } else {
                    Vec::new()
                };
                if upto.is_none() && singles.is_empty() {
                    state.flushing = false;
                    return Ok(());
                }
                (upto, singles)
            };
            if let Some(upto) = upto {
                self.channel
                    .basic_ack(upto, BasicAckOptions { multiple: true })
                    .await?;
            }
            for tag in singles {
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await?;
            }
        }
    }
}
