//! The backend's notifications (unique 0) on their way to the kernel: lent
//! to the writer thread (`notifier`), never written under the lock, taken
//! back with the write's outcome, and at the end of the session waited for
//! (NOTIFY_GRACE) or cut off by aborting the connection.
//!
//! Invariants: a notification takes a slot only while NOTIFY_RESERVE stay
//! free, so the loop can always read a request and the backend's reply to
//! it; otherwise at most one is parked and the backend's channel is not read
//! until a slot comes back or NOTIFY_STALL passes, when it is dropped
//! (counted, logged) so that replies keep flowing. `deliver_notification`
//! says why this cannot deadlock.

use std::time::Duration;

use slog::{error, warn};

use fuseproxy_policies::SlotId;

use super::shutdown::SHUTDOWN_GRACE;
use super::Shared;

/// Free slots a notification may not take from the loop: one to read a
/// request, one to read the backend's reply to it (see `deliver_notification`).
pub(super) const NOTIFY_RESERVE: usize = 2;

/// How long a notification may wait for a slot to come back from the writer,
/// with the backend's channel unread, before it is dropped.
const NOTIFY_STALL: Duration = Duration::from_secs(1);

/// How long the notification writer gets to end at the end of the session
/// before the connection is aborted under it.
const NOTIFY_GRACE: Duration = Duration::from_secs(1);

impl Shared {
    /// A notification (unique 0) goes to the writer thread: written here, it
    /// could wait in the kernel for a lock held by a caller that waits for a
    /// reply only this thread can deliver (see `notifier`).
    ///
    /// Why this cannot deadlock on slots: a notification is lent only while
    /// NOTIFY_RESERVE slots stay free, so lent notifications never take the
    /// slots the loop needs to read a request and the backend's reply to it.
    /// Otherwise it is parked (one at most) and the backend's channel is not
    /// read until a slot comes back, which the writer does within
    /// microseconds unless a write is stuck in the kernel. Stuck means waiting
    /// for a reply behind the parked notification on the channel, so after
    /// NOTIFY_STALL the parked one is dropped (counted, logged) and so is
    /// every notification that finds no slot until the writer moves again:
    /// replies keep flowing, and the stuck write ends once they are
    /// delivered. Holding, or writing inline, would hang the mount instead.
    pub(super) fn deliver_notification(&mut self, slot: SlotId) {
        if self.device.is_none() {
            self.arena.release(slot);
        } else if self.arena.free() >= NOTIFY_RESERVE {
            self.lend_notification(slot);
        } else if self.notify_stalled || self.parked.is_some() {
            self.arena.release(slot);
            self.dropped_notifications += 1;
        } else {
            self.parked = Some(slot);
            self.park_until = Some(std::time::Instant::now() + NOTIFY_STALL);
        }
    }

    fn lend_notification(&mut self, slot: SlotId) {
        if let Some(r) = self.recorder.as_mut() {
            r.reply_to_kernel(self.arena.msg(slot), false);
        }
        if let Some(t) = self.trace.as_mut() {
            t.reply_to_kernel(self.arena.msg(slot), false);
        }
        let lent = self.arena.lend(slot);
        if let Err(lent) = self.notifier.hand(lent) {
            // The writer is closed (the device is being given up) or gone.
            let slot = self.arena.reclaim(lent);
            self.arena.release(slot);
            self.dropped_notifications += 1;
        }
    }

    /// Takes back what the writer has written, counts the outcomes, and
    /// hands it a parked notification if there is room now.
    pub(super) fn notifications_back(&mut self) -> bool {
        let mut progress = false;
        while let Some((lent, outcome)) = self.notifier.take() {
            let slot = self.arena.reclaim(lent);
            self.arena.release(slot);
            self.count_write(outcome);
            self.notify_stalled = false;
            progress = true;
        }
        if let Some(slot) = self.parked {
            if self.arena.free() >= NOTIFY_RESERVE || self.device.is_none() {
                self.parked = None;
                self.park_until = None;
                self.deliver_notification(slot);
                progress = true;
            }
        }
        progress
    }

    /// No slot came back within NOTIFY_STALL: the writer is stuck in the
    /// kernel, most likely waiting for a reply queued behind the parked
    /// notification. Drop it so that the channel is read again.
    pub(super) fn notify_stall(&mut self) {
        let Some(slot) = self.parked.take() else {
            return;
        };
        self.arena.release(slot);
        self.dropped_notifications += 1;
        self.notify_stalled = true;
        warn!(
            self.log,
            "a notification has been in the kernel for over {}s ({} waiting behind it); \
             notifications that find no free slot are dropped until it returns ({} so far)",
            NOTIFY_STALL.as_secs(),
            self.notifier.outstanding().saturating_sub(1),
            self.dropped_notifications
        );
    }

    /// Ends the writer at the end of the session. A writer stuck in the
    /// kernel keeps the device open, so closing descriptors cannot abort the
    /// connection that would release it: abort it through fusectl.
    pub(super) fn stop_notifier(&mut self) {
        self.close_device();
        if !self.notifier.wait(NOTIFY_GRACE) {
            match self.connection.map(|c| c.abort()) {
                Some(Ok(())) => warn!(
                    self.log,
                    "a notification was still in the kernel {}s after the end; \
                     connection aborted through fusectl",
                    NOTIFY_GRACE.as_secs()
                ),
                Some(Err(e)) => error!(
                    self.log,
                    "a notification is stuck in the kernel and the connection \
                     cannot be aborted through fusectl: {e}"
                ),
                None => error!(
                    self.log,
                    "a notification is stuck in the kernel and the mount's connection \
                     is unknown (abort it in /sys/fs/fuse/connections)"
                ),
            }
            if !self.notifier.wait(SHUTDOWN_GRACE) {
                error!(
                    self.log,
                    "the notification writer is still stuck; exiting without it"
                );
            }
        }
        self.notifications_back();
        if let Some(slot) = self.parked.take() {
            self.arena.release(slot);
        }
    }
}
