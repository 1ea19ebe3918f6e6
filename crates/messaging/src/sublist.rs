//! The interest table: subscriptions by subject filter, in a trie of tokens with the
//! wildcards as their own branches, so a publish walks one path per matching wildcard instead
//! of testing every subscription. Entries are the caller's handles (a connection's
//! subscription); a match returns the plain ones and, per queue group name, the group's
//! members (the caller picks one of each group). Removing the last entry under a token prunes
//! it, so short-lived subjects (request inboxes) leave nothing behind.

use std::collections::HashMap;

use crate::subject::{ONE, REST};

/// What a subject reaches.
#[derive(Debug)]
pub struct Matches<T> {
    /// Subscriptions outside any queue group: each gets the message.
    pub plain: Vec<T>,
    /// Queue groups by name, with their members: one member of each gets the message.
    pub queues: Vec<(String, Vec<T>)>,
}

impl<T> Matches<T> {
    /// True when nothing matched.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }
}

/// Subscriptions by subject filter.
#[derive(Debug)]
pub struct Sublist<T> {
    root: Level<T>,
    len: usize,
}

#[derive(Debug)]
struct Level<T> {
    literal: HashMap<String, Node<T>>,
    one: Option<Box<Node<T>>>,
    rest: Option<Box<Node<T>>>,
}

#[derive(Debug)]
struct Node<T> {
    next: Option<Box<Level<T>>>,
    plain: Vec<T>,
    queues: HashMap<String, Vec<T>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            literal: HashMap::new(),
            one: None,
            rest: None,
        }
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            next: None,
            plain: Vec::new(),
            queues: HashMap::new(),
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.one.is_none() && self.rest.is_none()
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty() && self.next.is_none()
    }
}

impl<T> Default for Sublist<T> {
    fn default() -> Self {
        Sublist {
            root: Level::default(),
            len: 0,
        }
    }
}

impl<T: Clone + PartialEq> Sublist<T> {
    /// An empty table.
    pub fn new() -> Sublist<T> {
        Sublist::default()
    }

    /// How many entries the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `entry` under `filter` (checked by the caller with
    /// [`crate::subject::check_filter`]), in queue group `queue` if given.
    pub fn insert(&mut self, filter: &str, queue: Option<&str>, entry: T) {
        let mut level = &mut self.root;
        let mut tokens = filter.split('.').peekable();
        let node = loop {
            let Some(t) = tokens.next() else {
                unreachable!("split yields at least one token")
            };
            let node: &mut Node<T> = match t {
                ONE => level.one.get_or_insert_with(Box::default),
                REST => level.rest.get_or_insert_with(Box::default),
                _ => level.literal.entry(t.to_string()).or_default(),
            };
            if tokens.peek().is_none() {
                break node;
            }
            level = node.next.get_or_insert_with(Box::default);
        };
        match queue {
            Some(q) => node.queues.entry(q.to_string()).or_default().push(entry),
            None => node.plain.push(entry),
        }
        self.len += 1;
    }

    /// Removes `entry` from under `filter` (and `queue`); false when it was not there.
    pub fn remove(&mut self, filter: &str, queue: Option<&str>, entry: &T) -> bool {
        let tokens: Vec<&str> = filter.split('.').collect();
        let removed = remove_in(&mut self.root, &tokens, queue, entry);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// The entries `subject` (a literal subject) reaches: none when it has an empty token
    /// (`foo..bar`, `foo.`), which no subscription can match, as in nats-server.
    pub fn matches(&self, subject: &str) -> Matches<T> {
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut out = Matches {
            plain: Vec::new(),
            queues: Vec::new(),
        };
        if !tokens.iter().any(|t| t.is_empty()) {
            collect(&self.root, &tokens, &mut out);
        }
        out
    }
}

fn add<T: Clone>(node: &Node<T>, out: &mut Matches<T>) {
    out.plain.extend(node.plain.iter().cloned());
    for (name, members) in &node.queues {
        // A group reached through several filters is still one group.
        match out.queues.iter_mut().find(|(n, _)| n == name) {
            Some((_, all)) => all.extend(members.iter().cloned()),
            None => out.queues.push((name.clone(), members.clone())),
        }
    }
}

fn collect<T: Clone>(level: &Level<T>, tokens: &[&str], out: &mut Matches<T>) {
    let Some((first, rest)) = tokens.split_first() else {
        return;
    };
    // `>` takes this token and everything after it.
    if let Some(node) = &level.rest {
        add(node, out);
    }
    let mut visit = |node: &Node<T>| {
        if rest.is_empty() {
            add(node, out);
        } else if let Some(next) = &node.next {
            collect(next, rest, out);
        }
    };
    if let Some(node) = &level.one {
        visit(node);
    }
    if let Some(node) = level.literal.get(*first) {
        visit(node);
    }
}

/// Removes from the node `tokens` lead to, pruning what it leaves empty.
fn remove_in<T: PartialEq>(
    level: &mut Level<T>,
    tokens: &[&str],
    queue: Option<&str>,
    entry: &T,
) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return false;
    };
    let removed = {
        let node: Option<&mut Node<T>> = match *first {
            ONE => level.one.as_deref_mut(),
            REST => level.rest.as_deref_mut(),
            t => level.literal.get_mut(t),
        };
        let Some(node) = node else { return false };
        let removed = if rest.is_empty() {
            let list = match queue {
                Some(q) => node.queues.get_mut(q),
                None => Some(&mut node.plain),
            };
            let found = list.and_then(|l| l.iter().position(|e| e == entry).map(|i| (l, i)));
            match found {
                Some((l, i)) => {
                    l.swap_remove(i);
                    if let Some(q) = queue {
                        if node.queues.get(q).is_some_and(Vec::is_empty) {
                            node.queues.remove(q);
                        }
                    }
                    true
                }
                None => false,
            }
        } else {
            let removed = node
                .next
                .as_deref_mut()
                .is_some_and(|next| remove_in(next, rest, queue, entry));
            if node.next.as_deref().is_some_and(Level::is_empty) {
                node.next = None;
            }
            removed
        };
        removed
    };
    match *first {
        ONE if level.one.as_deref().is_some_and(Node::is_empty) => level.one = None,
        REST if level.rest.as_deref().is_some_and(Node::is_empty) => level.rest = None,
        ONE | REST => {}
        t => {
            if level.literal.get(t).is_some_and(Node::is_empty) {
                level.literal.remove(t);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &Sublist<u32>, subject: &str) -> Vec<u32> {
        let mut v = s.matches(subject).plain;
        v.sort_unstable();
        v
    }

    #[test]
    fn literals_and_wildcards_match_as_nats_does() {
        let mut s = Sublist::new();
        s.insert("foo.bar", None, 1);
        s.insert("foo.*", None, 2);
        s.insert("foo.>", None, 3);
        s.insert(">", None, 4);
        s.insert("*.bar", None, 5);
        s.insert("foo", None, 6);
        s.insert("foo*.bar", None, 7);
        assert_eq!(plain(&s, "foo.bar"), [1, 2, 3, 4, 5]);
        assert_eq!(plain(&s, "foo.baz"), [2, 3, 4]);
        assert_eq!(plain(&s, "foo.bar.baz"), [3, 4]);
        // `>` needs at least one token after its prefix.
        assert_eq!(plain(&s, "foo"), [4, 6]);
        assert_eq!(plain(&s, "foox.bar"), [4, 5]);
        assert_eq!(plain(&s, "foo*.bar"), [4, 5, 7]);
        // An empty token matches nothing, not even `>` or `*`.
        assert_eq!(plain(&s, "foo..bar"), Vec::<u32>::new());
        assert_eq!(plain(&s, "foo."), Vec::<u32>::new());
        assert_eq!(s.len(), 7);
    }

    #[test]
    fn queue_groups_gather_members_across_filters() {
        let mut s = Sublist::new();
        s.insert("jobs.*", Some("workers"), 1);
        s.insert("jobs.a", Some("workers"), 2);
        s.insert("jobs.a", Some("audit"), 3);
        s.insert("jobs.a", None, 4);
        let m = s.matches("jobs.a");
        assert_eq!(m.plain, [4]);
        let mut groups: Vec<(String, Vec<u32>)> = m
            .queues
            .into_iter()
            .map(|(n, mut v)| {
                v.sort_unstable();
                (n, v)
            })
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            [
                ("audit".to_string(), vec![3]),
                ("workers".to_string(), vec![1, 2])
            ]
        );
    }

    #[test]
    fn removal_finds_the_entry_and_prunes_empty_branches() {
        let mut s = Sublist::new();
        s.insert("_INBOX.abc.*", None, 1);
        s.insert("_INBOX.abc.*", None, 2);
        s.insert("a.b.c", Some("q"), 3);
        assert!(!s.remove("_INBOX.abc.*", None, &9));
        assert!(!s.remove("_INBOX.abc.*", Some("q"), &1));
        assert!(s.remove("_INBOX.abc.*", None, &1));
        assert_eq!(plain(&s, "_INBOX.abc.x"), [2]);
        assert!(s.remove("_INBOX.abc.*", None, &2));
        assert!(s.remove("a.b.c", Some("q"), &3));
        assert!(s.is_empty());
        assert!(s.root.is_empty(), "branches left behind: {:?}", s.root);
        assert!(s.matches("a.b.c").is_empty());
    }
}
