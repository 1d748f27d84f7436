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

use std::collections::VecDeque;
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
    /// Delivered and not yet acknowledged or settled otherwise, in tag order (a channel's
    /// delivery tags only grow), each with whether it has finished. At most a prefetch long.
    outstanding: VecDeque<(u64, bool)>,
    /// How many of `outstanding` have finished.
    finished: usize,
    flushing: bool,
}

impl State {
    fn position(&self, tag: u64) -> Option<usize> {
        self.outstanding
            .binary_search_by_key(&tag, |&(t, _)| t)
            .ok()
    }
}

impl Acks {
    pub(crate) fn new(channel: Channel, prefetch: u16) -> Self {
        Self {
            channel,
            limit: usize::from(prefetch / 2).max(1),
            state: Mutex::new(State {
                outstanding: VecDeque::with_capacity(usize::from(prefetch)),
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tracks a tag handed to the service.
    pub(crate) fn delivered(&self, tag: u64) {
        let mut state = self.lock();
        match state.outstanding.back() {
            Some(&(last, _)) if last >= tag => {
                // Not in order (never from one channel): keep the deque sorted all the same.
                let at = state.outstanding.partition_point(|&(t, _)| t < tag);
                state.outstanding.insert(at, (tag, false));
            }
            _ => state.outstanding.push_back((tag, false)),
        }
    }

    /// Forgets a tag whose own ack or nack has been sent.
    pub(crate) fn settled_elsewhere(&self, tag: u64) {
        let mut state = self.lock();
        if let Some(at) = state.position(tag) {
            if let Some((_, true)) = state.outstanding.remove(at) {
                state.finished -= 1;
            }
        }
    }

    /// Marks `tag` finished. `true` when the caller must flush: no flush is in flight to
    /// pick it up.
    pub(crate) fn finish(&self, tag: u64) -> bool {
        let mut state = self.lock();
        if let Some(at) = state.position(tag) {
            if !std::mem::replace(&mut state.outstanding[at].1, true) {
                state.finished += 1;
            }
        }
        !std::mem::replace(&mut state.flushing, true)
    }

    /// Sends acknowledgements until nothing finished is left, then ends the flush.
    pub(crate) async fn flush(&self) -> Result<(), lapin::Error> {
        let flushed = self.flush_all().await;
        if flushed.is_err() {
            self.lock().flushing = false;
        }
        flushed
    }

    async fn flush_all(&self) -> Result<(), lapin::Error> {
        loop {
            let (upto, singles) = {
                let mut state = self.lock();
                let mut upto = None;
                while let Some(&(tag, true)) = state.outstanding.front() {
                    state.outstanding.pop_front();
                    state.finished -= 1;
                    upto = Some(tag);
                }
                let singles: Vec<u64> = if state.finished >= self.limit {
                    let mut held = Vec::with_capacity(state.finished);
                    state.outstanding.retain(|&(tag, finished)| {
                        if finished {
                            held.push(tag);
                        }
                        !finished
                    });
                    state.finished = 0;
                    held
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
