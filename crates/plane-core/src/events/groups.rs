//! The choice of one member per worker group, for backends that choose
//! members themselves: the in-memory backend (one hub sees every member) and
//! the brokerless planes (each publisher sees every member, because every
//! subscription subscribes at every publisher). NATS chooses on the server
//! and needs none of this.
//!
//! Groups are keyed by (pattern, group name), as NATS queue groups are per
//! subscription subject: two members of the same group name with different
//! patterns are two groups.

use std::collections::HashMap;

use crate::subject;

/// What offering an event to one group member did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// The member took the event.
    Taken,
    /// The member's queue is full; the event was not taken (nor counted).
    Full,
    /// The member went away; it is forgotten.
    Gone,
}

/// The worker groups whose members subscribed at one publisher, and the
/// choice of one member per group for each event.
///
/// # Choice
/// Round-robin among the members of a group, in the order they joined. A
/// member whose queue is full is skipped, so that one stalled member does not
/// lose events its peers could take; when every member is full, the member
/// whose turn it was is offered the event as a last resort, and counts the
/// drop (it reports it as `Overloaded` at its next event). A member that went
/// away is forgotten as soon as an offer finds out.
#[derive(Debug)]
pub struct Groups<M> {
    groups: HashMap<(String, String), Group<M>>,
}

#[derive(Debug)]
struct Group<M> {
    /// Members by id, in the order they joined.
    members: Vec<(u64, M)>,
    /// Index of the member whose turn is next (modulo the member count).
    next: usize,
}

impl<M> Default for Groups<M> {
    fn default() -> Self {
        Groups {
            groups: HashMap::new(),
        }
    }
}

impl<M> Groups<M> {
    /// No groups.
    pub fn new() -> Self {
        Groups::default()
    }

    /// Add member `id` to the group `group` of subscriptions to `pattern`.
    /// A member already there under that id is replaced.
    pub fn join(&mut self, pattern: &str, group: &str, id: u64, member: M) {
        let g = self
            .groups
            .entry((pattern.to_owned(), group.to_owned()))
            .or_insert_with(|| Group {
                members: Vec::new(),
                next: 0,
            });
        g.members.retain(|(i, _)| *i != id);
        g.members.push((id, member));
    }

    /// Remove member `id` of the group `group` of `pattern`; returns it.
    pub fn leave(&mut self, pattern: &str, group: &str, id: u64) -> Option<M> {
        let key = (pattern.to_owned(), group.to_owned());
        let g = self.groups.get_mut(&key)?;
        let at = g.members.iter().position(|(i, _)| *i == id)?;
        let (_, member) = g.members.remove(at);
        if g.members.is_empty() {
            self.groups.remove(&key);
        }
        Some(member)
    }

    /// Every member of every group.
    pub fn iter(&self) -> impl Iterator<Item = &M> {
        self.groups
            .values()
            .flat_map(|g| g.members.iter().map(|(_, m)| m))
    }

    /// How many members there are, over all groups.
    pub fn members(&self) -> usize {
        self.groups.values().map(|g| g.members.len()).sum()
    }

    /// Hand an event on `subject` to one member of every group whose pattern
    /// matches it. `offer(member, last_resort)` tries one member; with
    /// `last_resort` a full member must count the event as dropped.
    pub fn deliver(&mut self, subject: &str, mut offer: impl FnMut(&mut M, bool) -> Offered) {
        self.groups.retain(|(pattern, _), g| {
            if subject::matches(pattern, subject) {
                g.deliver(&mut offer);
            }
            !g.members.is_empty()
        });
    }
}

impl<M> Group<M> {
    fn deliver(&mut self, offer: &mut impl FnMut(&mut M, bool) -> Offered) {
        let mut i = self.next;
        // Each member is tried once: `tries` counts down offers, not indices,
        // because a member that is gone is removed in place.
        let mut tries = self.members.len();
        while tries > 0 && !self.members.is_empty() {
            i %= self.members.len();
            match offer(&mut self.members[i].1, false) {
                Offered::Taken => {
                    self.next = i + 1;
                    return;
                }
                Offered::Full => i += 1,
                Offered::Gone => {
                    self.members.remove(i);
                }
            }
            tries -= 1;
        }
        if self.members.is_empty() {
            return;
        }
        let i = self.next % self.members.len();
        if offer(&mut self.members[i].1, true) == Offered::Gone {
            self.members.remove(i);
        } else {
            self.next = i + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member: whether its queue is full, whether it is gone, and what it
    /// took or dropped.
    #[derive(Debug, Default)]
    struct Member {
        full: bool,
        gone: bool,
        took: u32,
        dropped: u32,
    }

    fn offer(m: &mut Member, last_resort: bool) -> Offered {
        if m.gone {
            Offered::Gone
        } else if !m.full {
            m.took += 1;
            Offered::Taken
        } else {
            if last_resort {
                m.dropped += 1;
            }
            Offered::Full
        }
    }

    #[test]
    fn groups_pick_one_member_round_robin_per_pattern_and_name() {
        let mut g = Groups::new();
        for id in 1..=3 {
            g.join("a.*", "w", id, Member::default());
        }
        // Same name, other pattern: another group.
        g.join("a.b", "w", 9, Member::default());
        for _ in 0..6 {
            g.deliver("a.b", offer);
        }
        // Not matching `a.b`: only the `a.*` group.
        g.deliver("a.c", offer);
        let took: Vec<u32> = (1..=3)
            .map(|id| g.leave("a.*", "w", id).unwrap().took)
            .collect();
        assert_eq!(took, vec![3, 2, 2]);
        assert_eq!(g.leave("a.b", "w", 9).unwrap().took, 6);
        assert_eq!(g.members(), 0);
        assert!(g.leave("a.b", "w", 9).is_none());
    }

    fn member(g: &mut Groups<Member>, id: u64) -> &mut Member {
        g.groups
            .values_mut()
            .flat_map(|g| g.members.iter_mut())
            .find(|(i, _)| *i == id)
            .map(|(_, m)| m)
            .unwrap()
    }

    #[test]
    fn groups_skip_full_members_and_forget_gone_ones() {
        let mut g = Groups::new();
        for id in 1..=3 {
            g.join(">", "w", id, Member::default());
        }
        member(&mut g, 2).full = true;
        member(&mut g, 3).gone = true;
        // 1's turn: it takes.
        g.deliver("x", offer);
        // 2's turn: full, skipped; 3 is gone, forgotten; 1 takes.
        g.deliver("x", offer);
        assert_eq!(g.members(), 2);
        assert_eq!(member(&mut g, 1).took, 2);
        // Everyone full: the member whose turn it was (2, after 1) counts
        // the drop, and the turn moves on.
        member(&mut g, 1).full = true;
        g.deliver("x", offer);
        assert_eq!(member(&mut g, 2).dropped, 1);
        g.deliver("x", offer);
        assert_eq!(member(&mut g, 1).dropped, 1);
        assert_eq!(member(&mut g, 2).took, 0);
        // The last members gone: the group goes with them.
        member(&mut g, 1).gone = true;
        member(&mut g, 2).gone = true;
        g.deliver("x", offer);
        assert_eq!(g.members(), 0);
        assert!(g.groups.is_empty());
    }
}
