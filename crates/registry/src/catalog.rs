//! The catalog view: every registry record of the store, in memory, indexed for the reads
//! discovery makes (instances of a service, checks of a node or in a state), with the index
//! of every result a blocking query can wait on.
//!
//! The view is fed the `Registry` keyspace's changes in revision order (the server loads
//! the keyspace, then follows a store watch). Each change bumps the [`Topic`]s whose results
//! it alters to the change's revision, and only those: a change of one service never moves
//! another service's index, so its blocked watchers stay asleep.
//!
//! Indexes are store revisions. A topic the view has not seen change since it was built
//! reports the newest revision of the records behind it, and one with no records reports 1
//! (Consul's rule: never 0). Deletions older than the view's start are unknown, so an index
//! can go backwards after a restart: Consul's clients reset on that, as its docs require.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::error::RegistryError;
use crate::layout::Key;
use crate::model::{Check, CheckKind, CheckStatus, KvMeta, Node, Service, Session};

/// The check every berth member's node has: passing while the member is present.
pub const SERF_HEALTH: &str = "serfHealth";

/// A record with the store revisions it was created and last changed at.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    /// The record.
    pub value: T,
    /// Revision the record was created at (Consul's `CreateIndex`).
    pub create: i64,
    /// Revision of its last change (Consul's `ModifyIndex`).
    pub modify: i64,
}

/// A result a blocking query can wait on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The instances (and their checks and nodes) of one service name.
    Service(String),
    /// One node: its record, services and checks.
    Node(String),
    /// The list of service names with their tags.
    ServiceList,
    /// The list of nodes.
    NodeList,
    /// Every check (health by state).
    Checks,
    /// Every session.
    Sessions,
}

/// One change of a registry record, as the store reports it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A put.
    Put {
        /// Registry key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// Create revision of the key.
        create: i64,
        /// Revision of this put.
        modify: i64,
    },
    /// A delete (or a lease expiry) at `revision`.
    Delete {
        /// Registry key.
        key: &'a [u8],
        /// Revision of the deletion.
        revision: i64,
    },
}

type ServiceKey = (String, String);
type CheckKey = (String, String, String);

/// An instance of a service with its node and every check that applies to it (the node's
/// checks first), as health queries return it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The node (a placeholder with just the name if the node record is missing).
    pub node: Record<Node>,
    /// The instance.
    pub service: Record<Service>,
    /// Node checks, then the instance's checks, each with its effective status.
    pub checks: Vec<Record<Check>>,
}

impl Entry {
    /// The worst status among the checks (passing without checks).
    pub fn status(&self) -> CheckStatus {
        self.checks
            .iter()
            .map(|c| c.value.status)
            .max()
            .unwrap_or(CheckStatus::Passing)
    }
}

/// The catalog view. See the module docs.
#[derive(Debug, Default)]
pub struct Catalog {
    revision: i64,
    nodes: BTreeMap<String, Record<Node>>,
    services: BTreeMap<ServiceKey, Record<Service>>,
    checks: BTreeMap<CheckKey, Record<Check>>,
    alive: HashSet<CheckKey>,
    /// Checks of services with a `DeregisterCriticalServiceAfter`: the only ones the
    /// leader's reaper needs to look at, so its once-a-second pass does not walk (and
    /// copy) every check of a large catalog.
    reapable: BTreeSet<CheckKey>,
    /// Checks berth runs (HTTP, TCP, gRPC): what the runners assign, without walking the
    /// TTL checks of a large catalog twice a second.
    active: BTreeSet<CheckKey>,
    by_name: BTreeMap<String, BTreeSet<ServiceKey>>,
    check_ids: HashMap<(String, String), String>,
    index: HashMap<Topic, i64>,
    sessions: BTreeMap<String, Record<Session>>,
    /// Locked user keys: the holding session and the metadata's revision.
    locks: BTreeMap<Vec<u8>, (String, i64)>,
    /// Members whose presence key lives.
    members: BTreeSet<String>,
    /// Service definitions (Nacos's services), by service name.
    defs: BTreeMap<String, Record<crate::naming::ServiceDef>>,
    /// Per service name, how many of its instances carry each tag: the service list's tag
    /// union changes exactly when a count moves between 0 and 1.
    tag_counts: HashMap<String, HashMap<String, usize>>,
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(value).map_err(|e| RegistryError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        why: e.to_string(),
    })
}

impl Catalog {
    /// An empty view at revision 0.
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// The revision the view reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Marks the view as reflecting every change up to `revision` (the store may have moved
    /// on in other keyspaces only).
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// The index of `topic`: the revision of the last change of its result (see the module
    /// docs); at least 1.
    pub fn index(&self, topic: &Topic) -> i64 {
        self.index.get(topic).copied().unwrap_or(1).max(1)
    }

    fn touch(&mut self, topics: &mut Vec<Topic>, topic: Topic, revision: i64) {
        let at = self.index.entry(topic.clone()).or_insert(0);
        *at = (*at).max(revision);
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }

    fn tags_of(&self, name: &str) -> BTreeSet<String> {
        self.tag_counts
            .get(name)
            .into_iter()
            .flat_map(|m| m.keys().cloned())
            .collect()
    }

    /// Counts (`add`) or uncounts an instance's tags.
    fn count_tags(&mut self, name: &str, tags: &[String], add: bool) {
        let counts = self.tag_counts.entry(name.to_string()).or_default();
        // An instance may list a tag twice: count it once.
        let unique: BTreeSet<&String> = tags.iter().collect();
        for t in unique {
            if add {
                *counts.entry(t.clone()).or_insert(0) += 1;
            } else if let Some(c) = counts.get_mut(t) {
                *c -= 1;
                if *c == 0 {
                    counts.remove(t);
                }
            }
        }
        if counts.is_empty() {
            self.tag_counts.remove(name);
        }
    }

    /// Applies one change; returns the topics whose results it changed (their index is now
    /// the change's revision). Keys outside the catalog (KV metadata) change nothing.
    pub fn apply(&mut self, change: Change<'_>) -> Result<Vec<Topic>, RegistryError> {
        let (key, revision) = match change {
            Change::Put { key, modify, .. } => (key, modify),
            Change::Delete { key, revision } => (key, revision),
        };
        self.advance(revision);
        let mut topics = Vec::new();
        let Some(parsed) = Key::parse(key) else {
            return Ok(topics);
        };
        let put = match change {
            Change::Put {
                value,
                create,
                modify,
                ..
            } => Some((value, create, modify)),
            Change::Delete { .. } => None,
        };
        match parsed {
            Key::Kv(user_key) => {
                let session = match put {
                    Some((value, _, _)) => decode::<KvMeta>(key, value)?.session,
                    None => None,
                };
                match session {
                    Some(s) => {
                        self.locks.insert(user_key, (s, revision));
                    }
                    None => {
                        self.locks.remove(&user_key);
                    }
                }
            }
            Key::Session(id) => {
                match put {
                    Some((value, create, modify)) => {
                        let s: Session = decode(key, value)?;
                        self.sessions.insert(
                            id,
                            Record {
                                value: s,
                                create,
                                modify,
                            },
                        );
                    }
                    None => {
                        if self.sessions.remove(&id).is_none() {
                            return Ok(topics);
                        }
                    }
                }
                self.touch(&mut topics, Topic::Sessions, revision);
            }
            Key::ServiceDef(name) => {
                match put {
                    Some((value, create, modify)) => {
                        let def = decode(key, value)?;
                        self.defs.insert(
                            name.clone(),
                            Record {
                                value: def,
                                create,
                                modify,
                            },
                        );
                    }
                    None => {
                        if self.defs.remove(&name).is_none() {
                            return Ok(topics);
                        }
                    }
                }
                self.touch(&mut topics, Topic::Service(name), revision);
            }
            Key::Member(name) => {
                let changed = match put {
                    Some(_) => self.members.insert(name.clone()),
                    None => self.members.remove(&name),
                };
                if changed {
                    self.touch_check(&mut topics, &name, "", revision);
                }
            }
            Key::Node(name) => {
                match put {
                    Some((value, create, modify)) => {
                        let node: Node = decode(key, value)?;
                        self.nodes.insert(
                            name.clone(),
                            Record {
                                value: node,
                                create,
                                modify,
                            },
                        );
                    }
                    None => {
                        if self.nodes.remove(&name).is_none() {
                            return Ok(topics);
                        }
                    }
                }
                // The node's fields appear in the node list and in every entry of its
                // services.
                self.touch(&mut topics, Topic::NodeList, revision);
                let names: BTreeSet<String> = self
                    .services
                    .range((name.clone(), String::new())..)
                    .take_while(|((n, _), _)| *n == name)
                    .map(|(_, s)| s.value.name.clone())
                    .collect();
                for s in names {
                    self.touch(&mut topics, Topic::Service(s), revision);
                }
                self.touch(&mut topics, Topic::Node(name), revision);
            }
            Key::Service(node, id) => {
                let k = (node.clone(), id);
                let old = self.services.get(&k).map(|r| r.value.clone());
                let new = match put {
                    Some((value, create, modify)) => Some(Record {
                        value: decode::<Service>(key, value)?,
                        create,
                        modify,
                    }),
                    None => None,
                };
                let mut names: Vec<String> = old.iter().map(|s| s.name.clone()).collect();
                if let Some(n) = &new {
                    if !names.contains(&n.value.name) {
                        names.push(n.value.name.clone());
                    }
                }
                let existed: Vec<bool> =
                    names.iter().map(|n| self.by_name.contains_key(n)).collect();
                if let Some(old) = &old {
                    self.count_tags(&old.name, &old.tags, false);
                }
                if let Some(new) = &new {
                    self.count_tags(&new.value.name, &new.value.tags, true);
                }
                // The union of a name's tags changed when a tag only the old version had is
                // now carried by no instance, or one only the new version has by just it.
                let count = |name: &str, t: &String| {
                    self.tag_counts
                        .get(name)
                        .and_then(|m| m.get(t))
                        .copied()
                        .unwrap_or(0)
                };
                let has = |s: Option<&Service>, name: &str, t: &String| {
                    s.is_some_and(|s| s.name == name && s.tags.contains(t))
                };
                let new_value = new.as_ref().map(|r| &r.value);
                let mut tags_changed = false;
                if let Some(o) = &old {
                    tags_changed |= o
                        .tags
                        .iter()
                        .any(|t| !has(new_value, &o.name, t) && count(&o.name, t) == 0);
                }
                if let Some(n) = new_value {
                    tags_changed |= n
                        .tags
                        .iter()
                        .any(|t| !has(old.as_ref(), &n.name, t) && count(&n.name, t) == 1);
                }
                if let Some(old) = &old {
                    if let Some(set) = self.by_name.get_mut(&old.name) {
                        set.remove(&k);
                        if set.is_empty() {
                            self.by_name.remove(&old.name);
                        }
                    }
                    self.services.remove(&k);
                }
                if let Some(new) = new {
                    self.by_name
                        .entry(new.value.name.clone())
                        .or_default()
                        .insert(k.clone());
                    self.services.insert(k, new);
                }
                for (i, n) in names.iter().enumerate() {
                    if tags_changed || existed[i] != self.by_name.contains_key(n) {
                        self.touch(&mut topics, Topic::ServiceList, revision);
                    }
                    self.touch(&mut topics, Topic::Service(n.clone()), revision);
                }
                self.touch(&mut topics, Topic::Node(node), revision);
            }
            Key::Check(node, service, id) => {
                let k = (node.clone(), service.clone(), id.clone());
                match put {
                    Some((value, create, modify)) => {
                        let check: Check = decode(key, value)?;
                        if check.deregister_critical_after.is_zero() || service.is_empty() {
                            self.reapable.remove(&k);
                        } else {
                            self.reapable.insert(k.clone());
                        }
                        if check.kind.is_active() {
                            self.active.insert(k.clone());
                        } else {
                            self.active.remove(&k);
                        }
                        self.check_ids
                            .insert((node.clone(), id.clone()), service.clone());
                        self.checks.insert(
                            k,
                            Record {
                                value: check,
                                create,
                                modify,
                            },
                        );
                    }
                    None => {
                        self.reapable.remove(&k);
                        self.active.remove(&k);
                        if self.checks.remove(&k).is_none() {
                            return Ok(topics);
                        }
                        if self.check_ids.get(&(node.clone(), id.clone())) == Some(&service) {
                            self.check_ids.remove(&(node.clone(), id));
                        }
                    }
                }
                self.touch_check(&mut topics, &node, &service, revision);
            }
            Key::Ttl(node, service, id) => {
                let k = (node.clone(), service.clone(), id);
                let changed = match put {
                    Some(_) => self.alive.insert(k),
                    None => self.alive.remove(&k),
                };
                if changed {
                    self.touch_check(&mut topics, &node, &service, revision);
                }
            }
        }
        Ok(topics)
    }

    fn touch_check(&mut self, topics: &mut Vec<Topic>, node: &str, service: &str, revision: i64) {
        self.touch(topics, Topic::Checks, revision);
        self.touch(topics, Topic::Node(node.to_string()), revision);
        if service.is_empty() {
            // A node check is part of every entry of the node's services.
            let names: BTreeSet<String> = self
                .services
                .range((node.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == node)
                .map(|(_, s)| s.value.name.clone())
                .collect();
            for n in names {
                self.touch(topics, Topic::Service(n), revision);
            }
        } else if let Some(s) = self.services.get(&(node.to_string(), service.to_string())) {
            let name = s.value.name.clone();
            self.touch(topics, Topic::Service(name), revision);
        }
    }

    /// A check with its effective status: a TTL check whose TTL lapsed is critical.
    fn effective(&self, k: &CheckKey, r: &Record<Check>) -> Record<Check> {
        let mut r = r.clone();
        if matches!(r.value.kind, CheckKind::Ttl { .. }) && !self.alive.contains(k) {
            if r.value.status != CheckStatus::Critical {
                r.value.output = "TTL expired".into();
            }
            r.value.status = CheckStatus::Critical;
        }
        r
    }

    /// The checks of instance `service` on `node` (without walking the node's others).
    pub fn checks_of_instance(&self, node: &str, service: &str) -> Vec<Record<Check>> {
        if service.is_empty() {
            return Vec::new();
        }
        self.checks_under(node, service)
    }

    fn checks_under(&self, node: &str, service: &str) -> Vec<Record<Check>> {
        let from = (node.to_string(), service.to_string(), String::new());
        let mut out: Vec<Record<Check>> = Vec::new();
        if service.is_empty() {
            out.extend(self.serf_health(node));
        }
        out.extend(
            self.checks
                .range(from..)
                .take_while(|((n, s, _), _)| n == node && s == service)
                .map(|(k, r)| self.effective(k, r)),
        );
        out
    }

    /// The `serfHealth` check of a member's node: passing while the member is present.
    fn serf_health(&self, node: &str) -> Option<Record<Check>> {
        let n = self.nodes.get(node).filter(|n| n.value.member)?;
        let live = self.members.contains(node);
        Some(Record {
            value: Check {
                id: SERF_HEALTH.into(),
                name: "Serf Health Status".into(),
                node: node.to_string(),
                status: if live {
                    CheckStatus::Passing
                } else {
                    CheckStatus::Critical
                },
                output: if live {
                    "Agent alive and reachable".into()
                } else {
                    "Agent not live or unreachable".into()
                },
                ..Check::default()
            },
            create: n.create,
            modify: self.index(&Topic::Node(node.to_string())),
        })
    }

    fn node_or_placeholder(&self, name: &str) -> Record<Node> {
        self.nodes.get(name).cloned().unwrap_or_else(|| Record {
            value: Node {
                name: name.to_string(),
                ..Node::default()
            },
            create: 0,
            modify: 0,
        })
    }

    /// Every instance of service `name`, ordered by node then ID, with its node and checks.
    pub fn entries(&self, name: &str) -> Vec<Entry> {
        let Some(keys) = self.by_name.get(name) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| {
                let service = self.services.get(k)?.clone();
                let mut checks = self.checks_under(&k.0, "");
                checks.extend(self.checks_under(&k.0, &k.1));
                Some(Entry {
                    node: self.node_or_placeholder(&k.0),
                    service,
                    checks,
                })
            })
            .collect()
    }

    /// Every service name with the union of its instances' tags.
    pub fn service_names(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.by_name
            .keys()
            .map(|n| (n.clone(), self.tags_of(n)))
            .collect()
    }

    /// The definition of service `name`, if it has one.
    pub fn service_def(&self, name: &str) -> Option<Record<crate::naming::ServiceDef>> {
        self.defs.get(name).cloned()
    }

    /// The names of every defined service.
    pub fn defined_services(&self) -> impl Iterator<Item = &String> + '_ {
        self.defs.keys()
    }

    /// Every node.
    pub fn nodes(&self) -> Vec<Record<Node>> {
        self.nodes.values().cloned().collect()
    }

    /// Node `name`, if registered.
    pub fn node(&self, name: &str) -> Option<Record<Node>> {
        self.nodes.get(name).cloned()
    }

    /// The instances on node `node`, by ID.
    pub fn services_on(&self, node: &str) -> Vec<Record<Service>> {
        self.services
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Instance `id` on `node`.
    pub fn service(&self, node: &str, id: &str) -> Option<Record<Service>> {
        self.services
            .get(&(node.to_string(), id.to_string()))
            .cloned()
    }

    /// Every check on `node` (node checks and its instances'), with effective statuses.
    pub fn checks_on(&self, node: &str) -> Vec<Record<Check>> {
        self.serf_health(node)
            .into_iter()
            .chain(
                self.checks
                    .range((node.to_string(), String::new(), String::new())..)
                    .take_while(|((n, _, _), _)| n == node)
                    .map(|(k, r)| self.effective(k, r)),
            )
            .collect()
    }

    /// Every check of service `name`'s instances.
    pub fn checks_of_service(&self, name: &str) -> Vec<Record<Check>> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|(n, s)| self.checks_under(n, s))
            .collect()
    }

    /// Every check in `state` (`None`: every check).
    pub fn checks_in(&self, state: Option<CheckStatus>) -> Vec<Record<Check>> {
        self.nodes
            .keys()
            .filter_map(|n| self.serf_health(n))
            .chain(self.checks.iter().map(|(k, r)| self.effective(k, r)))
            .filter(|r| state.is_none_or(|s| r.value.status == s))
            .collect()
    }

    /// The critical checks of services with a `DeregisterCriticalServiceAfter` (what the
    /// reaper acts on), with their effective status.
    pub fn critical_reapable(&self) -> Vec<Record<Check>> {
        self.reapable
            .iter()
            .filter_map(|k| self.checks.get(k).map(|r| self.effective(k, r)))
            .filter(|r| r.value.status == CheckStatus::Critical)
            .collect()
    }

    /// Check `id` on `node`, with its effective status (`serfHealth` of a member's node
    /// included).
    pub fn check(&self, node: &str, id: &str) -> Option<Record<Check>> {
        if id == SERF_HEALTH {
            return self.serf_health(node);
        }
        let service = self.check_ids.get(&(node.to_string(), id.to_string()))?;
        let k = (node.to_string(), service.clone(), id.to_string());
        self.checks.get(&k).map(|r| self.effective(&k, r))
    }

    /// Check `id` on `node` as stored (a lapsed TTL check keeps its last set status here).
    pub fn stored_check(&self, node: &str, id: &str) -> Option<Record<Check>> {
        let service = self.check_ids.get(&(node.to_string(), id.to_string()))?;
        self.checks
            .get(&(node.to_string(), service.clone(), id.to_string()))
            .cloned()
    }

    /// True while TTL check `id` on `node` holds (its lease key is present).
    pub fn ttl_alive(&self, node: &str, service: &str, id: &str) -> bool {
        self.alive
            .contains(&(node.to_string(), service.to_string(), id.to_string()))
    }

    /// Every check berth runs itself (HTTP, TCP, gRPC), as stored.
    pub fn active_checks(&self) -> Vec<Record<Check>> {
        self.active
            .iter()
            .filter_map(|k| self.checks.get(k).cloned())
            .collect()
    }

    /// Every session, by ID.
    pub fn sessions(&self) -> Vec<Record<Session>> {
        self.sessions.values().cloned().collect()
    }

    /// Session `id`.
    pub fn session(&self, id: &str) -> Option<Record<Session>> {
        self.sessions.get(id).cloned()
    }

    /// Locked user keys whose session no longer exists, with the session and the revision
    /// of their metadata: what ending a session leaves to clean up.
    pub fn orphaned_locks(&self) -> Vec<(Vec<u8>, String, i64)> {
        self.locks
            .iter()
            .filter(|(_, (s, _))| !self.sessions.contains_key(s))
            .map(|(k, (s, rev))| (k.clone(), s.clone(), *rev))
            .collect()
    }

    /// Sessions that must end: their node is gone, or a check they depend on is critical
    /// or gone (Consul's invalidation rules).
    pub fn doomed_sessions(&self) -> Vec<Record<Session>> {
        self.sessions
            .values()
            .filter(|s| {
                let s = &s.value;
                if !self.nodes.contains_key(&s.node) {
                    return true;
                }
                let failing = |id: &str| {
                    self.check(&s.node, id)
                        .is_none_or(|c| c.value.status == CheckStatus::Critical)
                };
                s.node_checks.iter().any(|c| failing(c))
                    || s.service_checks.iter().any(|c| failing(c))
            })
            .cloned()
            .collect()
    }

    /// True while member `name`'s presence key lives.
    pub fn member_live(&self, name: &str) -> bool {
        self.members.contains(name)
    }

    /// Members whose presence key lives, by name.
    pub fn live_members(&self) -> Vec<String> {
        self.members.iter().cloned().collect()
    }

    /// Number of instances (for metrics).
    pub fn instance_count(&self) -> usize {
        self.services.len()
    }
}

#[cfg(test)]
mod tests;
