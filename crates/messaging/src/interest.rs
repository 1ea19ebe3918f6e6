//! A member's interest as the other members of its cluster see it, and which members a
//! message published here goes to.
//!
//! [`InterestBook`] counts the local subscriptions under each (filter, queue group) pair and
//! reports only the changes a peer needs: the first subscription of a pair and the removal of
//! its last. Each change is numbered, so a link that starts by sending the whole book (at
//! number `n`) can skip the changes queued before it that the book already holds.
//!
//! [`plan`] picks the peers for one message from their interest: every peer with a plain
//! match, and for each queue group that no local member took, one peer holding that group.

use std::collections::{BTreeMap, HashMap};

use crate::sublist::Matches;

/// A (filter, queue group) pair: what one change is about.
pub type Pair = (String, Option<String>);

/// A change of a member's interest worth telling its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its number: every change gets the next one.
    pub seq: u64,
    /// The subject filter.
    pub filter: String,
    /// The queue group, if any.
    pub queue: Option<String>,
    /// True: the first subscription of the pair; false: its last one left.
    pub add: bool,
}

/// Local subscriptions counted by (filter, queue group).
#[derive(Debug, Default)]
pub struct InterestBook {
    counts: HashMap<Pair, usize>,
    seq: u64,
}

impl InterestBook {
    /// An empty book.
    pub fn new() -> InterestBook {
        InterestBook::default()
    }

    /// Counts one more subscription; the change when it is the pair's first.
    pub fn add(&mut self, filter: &str, queue: Option<&str>) -> Option<Change> {
        let count = self
            .counts
            .entry((filter.to_string(), queue.map(str::to_string)))
            .or_default();
        *count += 1;
        (*count == 1).then(|| self.change(filter, queue, true))
    }

    /// Counts one subscription less; the change when it was the pair's last. Removing a pair
    /// the book does not hold changes nothing.
    pub fn remove(&mut self, filter: &str, queue: Option<&str>) -> Option<Change> {
        let key = (filter.to_string(), queue.map(str::to_string));
        let count = self.counts.get_mut(&key)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.counts.remove(&key);
        Some(self.change(filter, queue, false))
    }

    fn change(&mut self, filter: &str, queue: Option<&str>, add: bool) -> Change {
        self.seq += 1;
        Change {
            seq: self.seq,
            filter: filter.to_string(),
            queue: queue.map(str::to_string),
            add,
        }
    }

    /// The number of the last change (0: none yet).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Every pair held now: the whole interest, as of change [`InterestBook::seq`].
    pub fn pairs(&self) -> impl Iterator<Item = &Pair> {
        self.counts.keys()
    }

    /// How many pairs the book holds.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True when no subscription is counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// The peers one message goes to, with the queue groups each is to serve: every peer in
/// `remote.plain`, and for each group of `remote.queues` that `served_here` says no local
/// member took, one of the group's peers (`pick(n)` chooses an index below `n`). A peer holds
/// a pair at most once, so a peer in several matching filters still gets the message once.
pub fn plan(
    remote: &Matches<u64>,
    served_here: impl Fn(&str) -> bool,
    mut pick: impl FnMut(usize) -> usize,
) -> BTreeMap<u64, Vec<String>> {
    let mut to: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for peer in &remote.plain {
        to.entry(*peer).or_default();
    }
    for (group, peers) in &remote.queues {
        if peers.is_empty() || served_here(group) {
            continue;
        }
        let mut unique = peers.clone();
        unique.sort_unstable();
        unique.dedup();
        let peer = unique[pick(unique.len()).min(unique.len() - 1)];
        to.entry(peer).or_default().push(group.clone());
    }
    to
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sublist;

    #[test]
    fn only_first_and_last_subscriptions_are_changes() {
        let mut book = InterestBook::new();
        let first = book.add("a.*", None).expect("first");
        assert!(first.add && first.seq == 1 && first.filter == "a.*");
        assert_eq!(book.add("a.*", None), None);
        // The same filter in a queue group is a pair of its own.
        let queued = book.add("a.*", Some("q")).expect("queued");
        assert_eq!((queued.seq, queued.queue.as_deref()), (2, Some("q")));
        assert_eq!(book.remove("a.*", None), None, "one subscription is left");
        let last = book.remove("a.*", None).expect("last");
        assert!(!last.add && last.seq == 3);
        assert_eq!(book.remove("a.*", None), None, "not held: nothing changes");
        assert_eq!(book.remove("never", Some("q")), None);
        assert_eq!(book.seq(), 3);
        let pairs: Vec<&Pair> = book.pairs().collect();
        assert_eq!(pairs, [&("a.*".to_string(), Some("q".to_string()))]);
    }

    #[test]
    fn plain_interest_reaches_every_peer_once_and_groups_one_peer_unless_served_here() {
        let mut remote = Sublist::new();
        remote.insert("a.>", None, 2u64);
        remote.insert("a.b", None, 2);
        remote.insert("a.b", None, 3);
        remote.insert("a.b", Some("workers"), 3);
        remote.insert("a.*", Some("workers"), 4);
        remote.insert("a.b", Some("audit"), 4);
        let m = remote.matches("a.b");

        let to = plan(&m, |_| false, |_| 0);
        // Peer 2 matched twice and gets it once; `workers` goes to its first peer (3), and
        // `audit` to its only one (4).
        assert_eq!(
            to.into_iter().collect::<Vec<_>>(),
            [
                (2, vec![]),
                (3, vec!["workers".to_string()]),
                (4, vec!["audit".to_string()]),
            ]
        );
        // Groups a local member took go to no peer; peers with only such groups get nothing.
        let to = plan(&m, |g| g == "workers" || g == "audit", |_| 1);
        assert_eq!(
            to.into_iter().collect::<Vec<_>>(),
            [(2, vec![]), (3, vec![])]
        );
        // The pick chooses among the group's peers.
        let to = plan(&m, |g| g == "audit", |n| n - 1);
        assert_eq!(to.get(&4), Some(&vec!["workers".to_string()]));
        assert!(plan(&Sublist::<u64>::new().matches("a.b"), |_| false, |_| 0).is_empty());
    }
}
