//! Deadlines the runtime must wake the coordinator for, indexed so the earliest is cheap to find
//! and any one can be moved or cancelled without leaving stale entries behind.

use std::collections::{BTreeSet, HashMap};

/// What a deadline is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TimerKey {
    /// A member's session (or, for a new member, join) timeout.
    Session { group: String, member: String },
    /// A MEMBER_ID_REQUIRED member that has not rejoined yet.
    Pending { group: String, member: String },
    /// The end of the join phase of a rebalance (initial delay or rebalance timeout).
    Join { group: String },
    /// The deadline for every member to send SyncGroup after a rebalance.
    Sync { group: String },
    /// The periodic search for expired offsets.
    OffsetsExpiry,
}

/// A set of deadlines keyed by what they are for.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    by_key: HashMap<TimerKey, i64>,
    queue: BTreeSet<(i64, TimerKey)>,
}

impl Timers {
    /// Sets (or moves) the deadline of `key`.
    pub(crate) fn set(&mut self, key: TimerKey, deadline: i64) {
        if let Some(old) = self.by_key.insert(key.clone(), deadline) {
            self.queue.remove(&(old, key.clone()));
        }
        self.queue.insert((deadline, key));
    }

    /// Removes the deadline of `key`, if any.
    pub(crate) fn cancel(&mut self, key: &TimerKey) {
        if let Some(old) = self.by_key.remove(key) {
            self.queue.remove(&(old, key.clone()));
        }
    }

    /// True when `key` has a deadline.
    pub(crate) fn contains(&self, key: &TimerKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<i64> {
        self.queue.first().map(|(d, _)| *d)
    }

    /// Removes and returns the earliest key whose deadline is at or before `now`.
    pub(crate) fn pop_due(&mut self, now: i64) -> Option<TimerKey> {
        let (deadline, _) = self.queue.first()?;
        if *deadline > now {
            return None;
        }
        let (_, key) = self.queue.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }

    /// Number of armed deadlines.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        debug_assert_eq!(self.by_key.len(), self.queue.len());
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(g: &str) -> TimerKey {
        TimerKey::Join { group: g.into() }
    }

    #[test]
    fn moving_a_deadline_leaves_no_stale_entry() {
        let mut t = Timers::default();
        t.set(join("a"), 100);
        t.set(join("b"), 50);
        t.set(join("a"), 10);
        assert_eq!(t.len(), 2);
        assert_eq!(t.next(), Some(10));
        assert_eq!(t.pop_due(9), None);
        assert_eq!(t.pop_due(10), Some(join("a")));
        assert_eq!(t.pop_due(10), None);
        t.cancel(&join("b"));
        assert_eq!(t.next(), None);
        assert_eq!(t.len(), 0);
    }
}
