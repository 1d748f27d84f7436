//! Coalesced acknowledgements for one consumer channel.
//!
//! Acknowledging every message on its own costs the client and the broker a frame each. A
//! channel's [`Acks`] keeps at most one flush in flight: messages finished meanwhile go out
//! together as one `multiple` ack of the contiguous run of finished delivery tags. A tag
//! settled any other way — moved to a retry tier or poison queue, or returned — leaves the
//! run only once its own frame is sent, so a `multiple` ack never covers a message that is
//! still being handled or moved.
//!
//! A flush first lets the consumer's other workers run for a few turns of the scheduler, so
//! that its frame covers what they finish meanwhile.
//!
//! An acknowledgement can therefore return before its frame is on the wire. If the channel
//! dies first, the broker redelivers the message and the handler's idempotency absorbs it,
//! exactly as for an acknowledgement lost in flight.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use lapin::Channel;
use lapin::options::BasicAckOptions;

/// How many times a flush yields to let more messages finish before it sends a frame.
const GATHER_TURNS: usize = 4;

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

    fn delivered(&mut self, tag: u64) {
        match self.outstanding.back() {
            Some(&(last, _)) if last >= tag => {
                // Not in order (never from one channel): keep the deque sorted all the same.
                let at = self.outstanding.partition_point(|&(t, _)| t < tag);
                self.outstanding.insert(at, (tag, false));
            }
            _ => self.outstanding.push_back((tag, false)),
        }
    }

    fn settled_elsewhere(&mut self, tag: u64) {
        if let Some(at) = self.position(tag) {
            if let Some((_, true)) = self.outstanding.remove(at) {
                self.finished -= 1;
            }
        }
    }

    /// Marks `tag` finished; `true` when no flush is in flight to pick it up, and the caller
    /// now runs one.
    fn finish(&mut self, tag: u64) -> bool {
        if let Some(at) = self.position(tag) {
            if !std::mem::replace(&mut self.outstanding[at].1, true) {
                self.finished += 1;
            }
        }
        !std::mem::replace(&mut self.flushing, true)
    }

    /// What to acknowledge next: every tag up to the first unfinished one (one `multiple` ack), and tags
    /// finished behind an unfinished one, one by one, once `limit` of them wait. Ends the
    /// flush, returning `None`, when there is nothing.
    fn next_batch(&mut self, limit: usize) -> Option<(Option<u64>, Vec<u64>)> {
        let mut upto = None;
        while let Some(&(tag, true)) = self.outstanding.front() {
            self.outstanding.pop_front();
            self.finished -= 1;
            upto = Some(tag);
        }
        let singles: Vec<u64> = if self.finished >= limit {
            let mut held = Vec::with_capacity(self.finished);
            self.outstanding.retain(|&(tag, finished)| {
                if finished {
                    held.push(tag);
                }
                !finished
            });
            self.finished = 0;
            held
        } else {
            Vec::new()
        };
        if upto.is_none() && singles.is_empty() {
            self.flushing = false;
            return None;
        }
        Some((upto, singles))
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
        self.lock().delivered(tag);
    }

    /// Forgets a tag whose own ack or nack has been sent.
    pub(crate) fn settled_elsewhere(&self, tag: u64) {
        self.lock().settled_elsewhere(tag);
    }

    /// Marks `tag` finished. `true` when the caller must flush: no flush is in flight to
    /// pick it up.
    pub(crate) fn finish(&self, tag: u64) -> bool {
        self.lock().finish(tag)
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
            // Let the other workers finish what they hold first, so that one frame
            // acknowledges more messages (on a quorum queue each frame is a log entry). A few
            // turns of the scheduler while that helps, no timer: nothing waits long.
            for _ in 0..GATHER_TURNS {
                let finished = self.lock().finished;
                tokio::task::yield_now().await;
                if self.lock().finished == finished {
                    break;
                }
            }
            // The lock is let go before any await.
            let batch = self.lock().next_batch(self.limit);
            let Some((upto, singles)) = batch else {
                return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(tags: impl IntoIterator<Item = u64>) -> State {
        let mut state = State::default();
        for tag in tags {
            state.delivered(tag);
        }
        state
    }

    #[test]
    fn a_multiple_ack_covers_only_the_contiguous_finished_run() {
        let mut state = delivered(1..=5);
        assert!(state.finish(2), "the first finisher flushes");
        assert!(!state.finish(1), "a flush is in flight");
        assert!(!state.finish(4));
        // 3 is still being handled: 1 and 2 go, 4 waits behind it.
        assert_eq!(state.next_batch(10), Some((Some(2), vec![])));
        assert_eq!(state.next_batch(10), None, "nothing more: the flush ends");
        assert!(state.finish(3), "a new flush starts");
        assert_eq!(state.next_batch(10), Some((Some(4), vec![])));
        assert_eq!(state.next_batch(10), None);
        assert_eq!(state.outstanding, [(5, false)]);
    }

    #[test]
    fn finished_tags_behind_a_slow_one_go_one_by_one_past_the_limit() {
        let mut state = delivered(1..=6);
        assert!(state.finish(2));
        assert!(!state.finish(3));
        assert_eq!(state.next_batch(3), None, "two held: under the limit");
        assert!(state.finish(5));
        assert!(!state.finish(6));
        assert_eq!(state.next_batch(3), Some((None, vec![2, 3, 5, 6])));
        assert_eq!(state.next_batch(3), None);
        assert_eq!(state.outstanding, [(1, false), (4, false)]);
        assert_eq!(state.finished, 0);
    }

    #[test]
    fn a_tag_settled_elsewhere_leaves_the_run() {
        let mut state = delivered([1, 2, 3]);
        state.settled_elsewhere(1);
        assert!(state.finish(3));
        assert_eq!(state.next_batch(10), None, "2 is still being handled");
        state.settled_elsewhere(2);
        assert!(state.finish(3), "finishing twice counts once");
        assert_eq!(state.finished, 1);
        assert_eq!(state.next_batch(10), Some((Some(3), vec![])));
        assert!(state.outstanding.is_empty());
        assert_eq!(state.finished, 0);
    }

    #[test]
    fn out_of_order_deliveries_stay_sorted() {
        let state = delivered([5, 3, 4, 9]);
        let tags: Vec<u64> = state.outstanding.iter().map(|&(t, _)| t).collect();
        assert_eq!(tags, [3, 4, 5, 9]);
    }
}
