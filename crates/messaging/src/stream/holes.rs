//! Sequences removed from the middle of a stream, as ranges: a key-value bucket that keeps
//! rewriting one key removes a run of sequences, which is one range here whatever its length.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent ranges of sequences, `start → end` (inclusive).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holes {
    ranges: BTreeMap<u64, u64>,
    count: u64,
}

impl Holes {
    /// Adds `seq` (a no-op when it is held).
    pub fn insert(&mut self, seq: u64) {
        if self.contains(seq) {
            return;
        }
        let mut start = seq;
        let mut end = seq;
        // Joins the range ending just below, and the one starting just above.
        if let Some((&s, &e)) = self.ranges.range(..seq).next_back() {
            if e.checked_add(1) == Some(seq) {
                start = s;
                self.ranges.remove(&s);
            }
        }
        if let Some(next) = seq.checked_add(1) {
            if let Some(e) = self.ranges.remove(&next) {
                end = e;
            }
        }
        self.ranges.insert(start, end);
        self.count += 1;
    }

    /// Adds every sequence of `from..=to`.
    pub fn insert_range(&mut self, from: u64, to: u64) {
        // Runs at open only (the gaps found on disk): one at a time is simple and enough.
        let mut s = from;
        while s <= to {
            self.insert(s);
            s += 1;
        }
    }

    /// Whether `seq` is held.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &e)| seq <= e)
    }

    /// Drops every sequence below `first`.
    pub fn trim_below(&mut self, first: u64) {
        let below: Vec<(u64, u64)> = self.ranges.range(..first).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in below {
            self.ranges.remove(&s);
            if e >= first {
                self.ranges.insert(first, e);
                self.count -= first - s;
            } else {
                self.count -= e - s + 1;
            }
        }
    }

    /// How many sequences at or above `from` are held.
    pub fn count_from(&self, from: u64) -> u64 {
        if from == 0 {
            return self.count;
        }
        let mut n = 0;
        if let Some((&s, &e)) = self.ranges.range(..from).next_back() {
            if e >= from {
                n += e - from + 1;
            }
            let _ = s;
        }
        n + self
            .ranges
            .range(from..)
            .map(|(s, e)| e - s + 1)
            .sum::<u64>()
    }

    /// How many sequences are held.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_become_one_range_and_counts_hold() {
        let mut h = Holes::default();
        for s in [5, 7, 6, 10, 9, 20] {
            h.insert(s);
        }
        h.insert(6);
        assert_eq!(h.ranges.len(), 3, "{h:?}");
        assert_eq!(h.len(), 6);
        assert!(h.contains(7) && !h.contains(8) && h.contains(20));
        assert_eq!(
            (
                h.count_from(0),
                h.count_from(6),
                h.count_from(8),
                h.count_from(21)
            ),
            (6, 5, 3, 0)
        );
        h.trim_below(6);
        assert_eq!((h.len(), h.contains(5), h.contains(6)), (5, false, true));
        h.trim_below(10);
        assert_eq!(h.len(), 2);
        h.insert_range(11, 19);
        assert_eq!((h.len(), h.ranges.len()), (11, 1));
        // A million removals in a row are one range.
        let mut big = Holes::default();
        for s in 1..=1_000_000 {
            big.insert(s);
        }
        assert_eq!((big.ranges.len(), big.count_from(500_001)), (1, 500_000));
    }
}
