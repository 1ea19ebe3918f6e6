//! The `$JS.API` requests of streams in a cluster: what any member answers from the
//! assignments (create, delete, names, list, account info), what only a stream's peers
//! answer (info, update, purge, message get and delete, direct get) and what only its
//! leader answers (the consumers' API and acks).

use super::replica::{flush, propose, read_barrier, unexpected};
use super::*;

impl Cluster {
    /// Answers a `$JS.API` request when this member can: false leaves it to the routes (a
    /// stream-specific request for a stream this member holds no replica of goes to a peer).
    pub(crate) fn api(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        subject: &str,
        reply: Option<&str>,
        payload: &Bytes,
    ) -> bool {
        if subject.starts_with("$JS.ACK.") || subject.starts_with("$JS.FC.") {
            // `$JS.ACK.<stream>.…`: the stream's leader takes it.
            let stream = subject.split('.').nth(2).unwrap_or_default();
            if hub.stream_handle(stream).is_none() {
                return false;
            }
            return consumers::ack(hub, subject, reply, payload);
        }
        let Some(rest) = subject.strip_prefix("$JS.API.") else {
            return false;
        };
        let (first, op) = rest.split_once('.').unwrap_or((rest, ""));
        let stream_op = match first {
            "INFO" if op.is_empty() => {
                let answer = Ok(self.account_info(hub));
                answer_to(hub, reply, "account_info", answer);
                return true;
            }
            "CONSUMER" => return self.consumer_api(hub, op, reply, payload),
            "STREAM" => op,
            "DIRECT" => {
                let Some(rest) = op.strip_prefix("GET.") else {
                    return false;
                };
                let name = rest.split_once('.').map_or(rest, |(n, _)| n);
                let Some(local) = self.local(name) else {
                    return false;
                };
                let (hub, reply, rest, payload) = (
                    hub.clone(),
                    reply.map(str::to_string),
                    rest.to_string(),
                    payload.clone(),
                );
                tokio::spawn(async move {
                    direct_get(&hub, &local, &rest, reply.as_deref(), &payload).await;
                });
                return true;
            }
            _ => return false,
        };
        let (verb, name) = match stream_op.split_once('.') {
            Some(("MSG", rest)) => match rest.split_once('.') {
                Some(("GET", name)) => ("MSG.GET", name),
                Some(("DELETE", name)) => ("MSG.DELETE", name),
                _ => return false,
            },
            Some((verb, name)) => (verb, name),
            None => (stream_op, ""),
        };
        let kind = match verb {
            "CREATE" => "stream_create",
            "UPDATE" => "stream_update",
            "INFO" => "stream_info",
            "DELETE" => "stream_delete",
            "PURGE" => "stream_purge",
            "NAMES" => "stream_names",
            "LIST" => "stream_list",
            "MSG.GET" => "stream_msg_get",
            "MSG.DELETE" => "stream_msg_delete",
            _ => return false,
        };
        let peers_only = matches!(verb, "UPDATE" | "INFO" | "PURGE" | "MSG.GET" | "MSG.DELETE");
        let local = self.local(name);
        if peers_only && local.is_none() {
            let answer = if !self.view().streams.contains_key(name) {
                not_found()
            } else if self.routed(hub, subject, &queue_of(name)) {
                // A peer answers (the routes carry the request to one).
                return false;
            } else {
                unavailable("no member holding the stream can be reached")
            };
            answer_to(hub, reply, kind, Err(answer));
            return true;
        }
        let (me, hub2) = (self.clone(), hub.clone());
        let (verb, name, reply, payload) = (
            verb.to_string(),
            name.to_string(),
            reply.map(str::to_string),
            payload.clone(),
        );
        tokio::spawn(async move {
            let answer = patiently(
                writes(&verb),
                API_PATIENCE,
                me.stream_request(&hub2, &verb, &name, local, &payload),
            )
            .await;
            if let Err(e) = &answer {
                tracing::debug!(stream = %name, verb, error = %e, "JetStream API error");
            }
            answer_to(&hub2, reply.as_deref(), kind, answer);
        });
        true
    }

    /// A `$JS.API.CONSUMER.*` request: served here when this member leads the stream's
    /// group (answered once a create or delete is committed), left to the routes (to the
    /// leader) when the stream exists elsewhere.
    fn consumer_api(&self, hub: &Arc<Hub>, op: &str, reply: Option<&str>, payload: &Bytes) -> bool {
        let tail = op
            .strip_prefix("DURABLE.")
            .or_else(|| op.strip_prefix("MSG."))
            .unwrap_or(op);
        let (verb, rest) = tail.split_once('.').unwrap_or((tail, ""));
        let stream = rest.split('.').next().unwrap_or_default();
        let Some(handle) = hub.stream_handle(stream) else {
            if !self.view().streams.contains_key(stream) {
                answer_to(hub, reply, "consumer_info", Err(not_found()));
                return true;
            }
            let subject = format!("$JS.API.CONSUMER.{op}");
            if self.routed(hub, &subject, &leader_queue_of(stream)) {
                return false;
            }
            // No leader serves the stream's consumers yet (an election): say so rather
            // than let the request go unanswered.
            answer_to(
                hub,
                reply,
                "consumer_info",
                Err(unavailable("the stream has no leader at the moment")),
            );
            return true;
        };
        match consumers::api(hub, op, reply, payload) {
            consumers::Served::Answer(kind, answer) => {
                let changed = answer.is_ok() && matches!(verb, "CREATE" | "DELETE");
                if !changed {
                    answer_to(hub, reply, kind, answer);
                    return true;
                }
                let (hub, reply) = (hub.clone(), reply.map(str::to_string));
                tokio::spawn(async move {
                    let answer = patiently(true, API_PATIENCE, async {
                        flush(&handle).await?;
                        answer
                    })
                    .await;
                    answer_to(&hub, reply.as_deref(), kind, answer);
                });
                true
            }
            consumers::Served::Done => true,
            consumers::Served::No => false,
        }
    }

    /// Whether `subject` would reach, through an open link, a member serving `queue`.
    fn routed(&self, hub: &Hub, subject: &str, queue: &str) -> bool {
        hub.routes.remote_matches(subject).is_some_and(|m| {
            m.queues
                .iter()
                .any(|(g, peers)| g == queue && peers.iter().any(|p| hub.routes.is_up(*p)))
        })
    }

    fn account_info(&self, hub: &Hub) -> Value {
        let streams = self.view().streams.len();
        let storage: u64 = lock(&self.local)
            .values()
            .filter_map(|l| l.group.read(|s| s.store().state().bytes))
            .sum();
        let consumers = lock(&self.local)
            .values()
            .filter_map(|l| lock(&l.led).as_ref().map(|h| h.consumers().len()))
            .sum::<usize>();
        api::account_info_json(&hub.js, streams, storage, consumers)
    }

    async fn stream_request(
        &self,
        hub: &Arc<Hub>,
        verb: &str,
        name: &str,
        local: Option<Arc<Local>>,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let local = || -> Result<Arc<Local>, ApiError> { local.clone().ok_or_else(not_found) };
        match verb {
            "CREATE" => self.create(hub, name, payload).await,
            "DELETE" => self.delete(hub, name).await,
            "NAMES" | "LIST" => {
                let r: api::ListRequest = body(payload)?;
                let names: Vec<(String, Assignment)> = self
                    .view()
                    .streams
                    .iter()
                    .filter(|(_, a)| {
                        r.subject.as_deref().is_none_or(|f| {
                            a.config
                                .subjects
                                .iter()
                                .any(|x| berth_messaging::subject::overlaps(x, f))
                        })
                    })
                    .map(|(n, a)| (n.clone(), a.clone()))
                    .collect();
                let total = names.len();
                if verb == "NAMES" {
                    let page: Vec<&String> = names
                        .iter()
                        .skip(r.offset)
                        .take(api::NAMES_LIMIT)
                        .map(|(n, _)| n)
                        .collect();
                    return Ok(json!({
                        "total": total,
                        "offset": r.offset,
                        "limit": api::NAMES_LIMIT,
                        "streams": if page.is_empty() { Value::Null } else { json!(page) },
                    }));
                }
                let infos: Vec<Value> = names
                    .iter()
                    .skip(r.offset)
                    .take(api::LIST_LIMIT)
                    .map(|(n, a)| self.info_of(hub, n, a, None))
                    .collect();
                Ok(
                    json!({"total": total, "offset": r.offset, "limit": api::LIST_LIMIT, "streams": infos}),
                )
            }
            "INFO" => {
                let r: api::InfoRequest = body(payload)?;
                let l = local()?;
                read_barrier(&l).await?;
                Ok(self.info_of(hub, name, &l.assignment(), r.subjects_filter.as_deref()))
            }
            "UPDATE" => {
                let l = local()?;
                self.update(hub, name, &l, payload).await
            }
            "PURGE" => {
                let r: api::PurgeRequest = body(payload)?;
                let cmd = Command::Purge {
                    filter: r.filter.as_deref(),
                    seq: r.seq,
                    keep: r.keep,
                };
                let l = local()?;
                match propose(&l, &cmd).await? {
                    Outcome::Removed(n) => Ok(json!({"success": true, "purged": n})),
                    other => Err(unexpected(&other)),
                }
            }
            "MSG.DELETE" => {
                let r: MsgRequest = body(payload)?;
                let seq = r
                    .seq
                    .ok_or_else(|| ApiError::new(400, 10003, "bad request"))?;
                let l = local()?;
                match propose(&l, &Command::Delete { seq }).await? {
                    Outcome::Done => Ok(json!({"success": true})),
                    other => Err(unexpected(&other)),
                }
            }
            "MSG.GET" => {
                let r: MsgRequest = body(payload)?;
                let l = local()?;
                read_barrier(&l).await?;
                // Closed only while the replica installs a snapshot: a moment, so 503.
                let m = l.group.read(|s| api::find(s, &r)).ok_or_else(|| {
                    unavailable("the stream's replica is installing a snapshot")
                })??;
                Ok(json!({"message": api::msg_json(&m)}))
            }
            _ => Err(ApiError::new(400, 10003, "bad request")),
        }
    }

    /// A stream's info from its assignment and, when this member holds a replica, its state.
    fn info_of(&self, hub: &Hub, name: &str, a: &Assignment, filter: Option<&str>) -> Value {
        let local = self.local(name);
        let (state, subjects) = local
            .as_ref()
            .and_then(|l| {
                l.group.read(|s| {
                    (
                        s.store().state(),
                        filter.map(|f| json!(s.store().subject_counts(f))),
                    )
                })
            })
            .unwrap_or_default();
        let leader = local.as_ref().and_then(|l| l.replica.status().leader);
        // A peer is current once it votes in the group (a new one is not until caught up).
        let voters: Option<Vec<u64>> = local.as_ref().map(|l| {
            l.replica
                .members()
                .into_iter()
                .filter(|m| !m.is_learner)
                .map(|m| m.id)
                .collect()
        });
        // Members by name, as nats-server names its servers.
        let names: HashMap<u64, String> = hub
            .core
            .consensus
            .members()
            .into_iter()
            .map(|m| (m.id, m.member.name))
            .collect();
        let name_of = |id: u64| names.get(&id).cloned().unwrap_or_else(|| format!("{id:x}"));
        // Peers being let go are replicas until the group has removed them.
        let replicas: Vec<Value> = a
            .peers
            .iter()
            .chain(&a.leaving)
            .filter(|p| Some(**p) != leader)
            .map(|p| {
                let current = voters.as_ref().is_none_or(|v| v.contains(p));
                json!({"name": name_of(*p), "current": current})
            })
            .collect();
        json!({
            "config": a.config,
            "created": api::time(a.created),
            "state": api::state_json(&state, 0, subjects),
            "cluster": {
                "name": hub.core.config.initial_cluster_token,
                "leader": leader.map(name_of),
                "replicas": replicas,
            },
            "ts": api::time(now_ns()),
        })
    }

    async fn create(&self, hub: &Arc<Hub>, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let config = config_of(name, payload)?;
        let existing = current_assignments(hub).await?;
        if let Some(a) = existing.get(name) {
            if a.config != config {
                return Err(ApiError::new(
                    400,
                    10058,
                    "stream name already in use with a different configuration",
                ));
            }
            return Ok(self.info_of(hub, name, a, None));
        }
        no_overlap(&existing, name, &config)?;
        let replicas = usize::try_from(config.num_replicas.max(1)).unwrap_or(usize::MAX);
        let peers = place(hub, &existing, replicas, &[])?;
        let a = Assignment {
            initial: config.clone(),
            config,
            created: now_ns(),
            group: format!("js-{:016x}", rand::rng().random::<u64>()),
            peers,
            joined: Vec::new(),
            leaving: Vec::new(),
        };
        let value = serde_json::to_vec(&a).map_err(|e| unavailable(&e))?;
        let k = key(name);
        let txn = TxnRequest {
            compare: vec![Compare {
                key: k.clone(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![put_op(k, value, 0)],
            failure: Vec::new(),
        };
        if !change_assignments(hub, txn).await? {
            return Err(ApiError::new(
                400,
                10058,
                "stream name already in use (created concurrently)",
            ));
        }
        tracing::info!(stream = %name, group = %a.group, peers = ?a.peers, "JetStream: stream assigned");
        // Answered once the stream's peers serve it here (their interest reached this
        // member, or this member is one): a publish right after the answer is stored.
        self.sync_view(hub).await;
        let subject = a.config.subjects.first().cloned().unwrap_or_default();
        let queue = queue_of(name);
        let deadline = tokio::time::Instant::now() + CREATE_PATIENCE;
        loop {
            let here = self.local(name).is_some();
            // A peer's interest has come here, and this member's link to it is open.
            let routed = self.routed(hub, &subject, &queue);
            let led = match self.local(name) {
                Some(l) => l.replica.leader().await.is_ok(),
                None => true,
            };
            // And its consumers' runtime on the leader answers (here or through a link).
            let consumers = self.led(name).is_some()
                || self.routed(
                    hub,
                    &format!("$JS.API.CONSUMER.NAMES.{name}"),
                    &leader_queue_of(name),
                );
            if (here || routed) && led && consumers {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(stream = %name, "JetStream: created, but its peers do not serve it yet");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut info = self.info_of(hub, name, &a, None);
        info["did_create"] = json!(true);
        Ok(info)
    }

    async fn update(
        &self,
        hub: &Arc<Hub>,
        name: &str,
        local: &Local,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let config = config_of(name, payload)?;
        let existing = current_assignments(hub).await?;
        let Some((old, rev)) = assignment_at(hub, name).await? else {
            return Err(not_found());
        };
        old.config.check_update(&config)?;
        no_overlap(&existing, name, &config)?;
        let want = usize::try_from(config.num_replicas.max(1)).unwrap_or(usize::MAX);
        let have = old.peers.len();
        if want != have && !old.leaving.is_empty() {
            return Err(ApiError::new(
                503,
                10008,
                "JetStream system temporarily unavailable: the stream's last replica change is still under way",
            ));
        }
        // The assignment names the peers; the group's leader brings its members in line
        // (`membership::converge`): new peers (placed here; a cluster too small refuses)
        // join as learners and vote once caught up, and peers other than the leader are let
        // go only when every remaining peer votes.
        let mut a = Assignment {
            config: config.clone(),
            ..old.clone()
        };
        if want > have {
            a.peers
                .extend(place(hub, &existing, want - have, &old.peers)?);
        } else if want < have {
            let leader = local.replica.leader().await.map_err(|e| unavailable(&e))?;
            let (stay, go): (Vec<u64>, Vec<u64>) = {
                let mut others: Vec<u64> =
                    old.peers.iter().copied().filter(|p| *p != leader).collect();
                let go = others.split_off(want.saturating_sub(1).min(others.len()));
                let mut stay = vec![leader];
                stay.extend(others);
                (stay, go)
            };
            a.peers = stay;
            a.leaving = go;
        }
        if want != have {
            // From now on no peer forms the group on its own.
            a.joined = a.peers.iter().chain(&a.leaving).copied().collect();
        }
        let json_config = serde_json::to_vec(&config).map_err(|e| unavailable(&e))?;
        // The stream applies its new limits at one point of its log, then the assignment
        // records the configuration (only if no other change came between).
        match propose(
            local,
            &Command::Configure {
                now: now_ns(),
                config: &json_config,
            },
        )
        .await?
        {
            Outcome::Done => {}
            other => return Err(unexpected(&other)),
        }
        if !write_assignment(hub, name, &a, rev).await? {
            return Err(unavailable(
                "the stream's assignment changed meanwhile; try again",
            ));
        }
        if want != have {
            tracing::info!(stream = %name, from = have, to = want, peers = ?a.peers, leaving = ?a.leaving, "JetStream: replica change assigned");
        }
        self.sync_view(hub).await;
        Ok(self.info_of(hub, name, &a, None))
    }

    async fn delete(&self, hub: &Arc<Hub>, name: &str) -> Result<Value, ApiError> {
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key(name),
                target: CompareTarget::Version as i32,
                result: CompareResult::Greater as i32,
                target_union: Some(TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![delete_op(key(name), Vec::new())],
            failure: Vec::new(),
        };
        if !change_assignments(hub, txn).await? {
            return Err(not_found());
        }
        tracing::info!(stream = %name, "JetStream: stream deleted");
        self.sync_view(hub).await;
        Ok(json!({"success": true}))
    }
}

/// The assignments as of everything committed before the call (another member may have
/// just changed them).
pub(super) async fn current_assignments(
    hub: &Hub,
) -> Result<BTreeMap<String, Assignment>, ApiError> {
    hub.core
        .consensus
        .read_index()
        .await
        .map_err(|e| unavailable(&e))?;
    read_assignments(hub).map_err(|e| unavailable(&e))
}

/// Stream `name`'s assignment and the store revision it was last written at, read after
/// catching up with the meta group.
pub(super) async fn assignment_at(
    hub: &Hub,
    name: &str,
) -> Result<Option<(Assignment, i64)>, ApiError> {
    hub.core
        .consensus
        .read_index()
        .await
        .map_err(|e| unavailable(&e))?;
    let kvs = super::stored_assignments(hub, key(name), Vec::new()).map_err(|e| unavailable(&e))?;
    let Some(kv) = kvs.first() else {
        return Ok(None);
    };
    let a = serde_json::from_slice(&kv.value)
        .map_err(|e| unavailable(format!("an unreadable stream assignment: {e}")))?;
    Ok(Some((a, kv.mod_revision)))
}

/// Writes stream `name`'s assignment `a` if it is still at revision `rev`; whether it was.
pub(super) async fn write_assignment(
    hub: &Hub,
    name: &str,
    a: &Assignment,
    rev: i64,
) -> Result<bool, ApiError> {
    let value = serde_json::to_vec(a).map_err(|e| unavailable(&e))?;
    change_assignments(
        hub,
        TxnRequest {
            compare: vec![Compare {
                key: key(name),
                target: CompareTarget::Mod as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::ModRevision(rev)),
                ..Default::default()
            }],
            success: vec![put_op(key(name), value, 0)],
            failure: Vec::new(),
        },
    )
    .await
}

/// Proposes a change of the assignments to the meta group; whether its guard held.
async fn change_assignments(hub: &Hub, txn: TxnRequest) -> Result<bool, ApiError> {
    match hub
        .core
        .consensus
        .propose_in(Keyspace::Messaging, StoreCommand::Txn(txn))
        .await
    {
        Ok(Applied::Txn(r)) => Ok(r.succeeded),
        Ok(other) => Err(unavailable(format!("unexpected result {other:?}"))),
        Err(e) => Err(unavailable(&e)),
    }
}

/// Refuses `config` (of stream `name`) when its subjects overlap another stream's.
fn no_overlap(
    existing: &BTreeMap<String, Assignment>,
    name: &str,
    config: &Config,
) -> Result<(), ApiError> {
    let overlapping = existing.iter().any(|(n, a)| {
        n != name
            && a.config.subjects.iter().any(|x| {
                config
                    .subjects
                    .iter()
                    .any(|y| berth_messaging::subject::overlaps(x, y))
            })
    });
    if overlapping {
        return Err(ApiError::new(
            400,
            10065,
            "subjects overlap with an existing stream",
        ));
    }
    Ok(())
}

/// How long a `$JS.API` request may wait on the groups (a read index, a proposal, a new
/// stream's peers) before it is answered with a 503: under the clients' 5 s default, so a
/// client hears why instead of timing out, and no answer comes after the client has given
/// up (the reply inbox may be serving its next request by then).
pub(super) const API_PATIENCE: Duration = Duration::from_secs(4);

/// The verbs that change a stream: a request of theirs that runs out of patience may still
/// apply.
fn writes(verb: &str) -> bool {
    matches!(
        verb,
        "CREATE" | "UPDATE" | "DELETE" | "PURGE" | "MSG.DELETE"
    )
}

/// `answer`, or a 503 once `patience` has passed (saying that the change may still apply,
/// for a `write`).
async fn patiently(
    write: bool,
    patience: Duration,
    answer: impl std::future::Future<Output = Result<Value, ApiError>>,
) -> Result<Value, ApiError> {
    match tokio::time::timeout(patience, answer).await {
        Ok(a) => a,
        Err(_) if write => Err(unavailable(
            "the request timed out waiting for the stream's group; the change may still apply",
        )),
        Err(_) => Err(unavailable(
            "the request timed out waiting for the stream's group",
        )),
    }
}

fn answer_to(hub: &Hub, reply: Option<&str>, kind: &str, answer: Result<Value, ApiError>) {
    hub.js
        .api_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if answer.is_err() {
        hub.js
            .api_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let Some(reply) = reply else { return };
    let body = api::response(kind, answer);
    hub.inject(reply, None, &Bytes::from(body.to_string()));
}

/// A direct get served by a replica (after a read barrier).
async fn direct_get(hub: &Hub, local: &Local, rest: &str, reply: Option<&str>, payload: &Bytes) {
    let (name, last_of) = match rest.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    if !local.assignment().config.allow_direct {
        return;
    }
    let Some(reply) = reply else { return };
    // No answer when the stream cannot be read in time, as a member that does not serve
    // it: the client's own timeout tells it.
    if !matches!(
        tokio::time::timeout(API_PATIENCE, read_barrier(local)).await,
        Ok(Ok(_))
    ) {
        return;
    }
    let request = match last_of {
        Some(subject) => Ok(MsgRequest {
            last_by_subj: Some(subject.to_string()),
            ..Default::default()
        }),
        None if payload.is_empty() => {
            api::direct_answer(
                hub,
                reply,
                name,
                Err(ApiError::new(408, 0, api::EMPTY_REQUEST)),
            );
            return;
        }
        None => body::<MsgRequest>(payload),
    };
    let found: Result<StoredMsg, ApiError> = request.and_then(|r| {
        local
            .group
            .read(|s| api::find(s, &r))
            .unwrap_or_else(|| Err(not_found()))
    });
    api::direct_answer(hub, reply, name, found);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_that_waits_too_long_is_answered_with_a_503() {
        let quick = Duration::from_millis(20);
        let stuck = || std::future::pending::<Result<Value, ApiError>>();
        let write = patiently(true, quick, stuck())
            .await
            .expect_err("timed out");
        let read = patiently(false, quick, stuck())
            .await
            .expect_err("timed out");
        let shown = |e: ApiError| api::response("stream_info", Err(e));
        let (write, read) = (shown(write), shown(read));
        assert_eq!(write["error"]["code"], 503, "{write}");
        assert_eq!(write["error"]["err_code"], 10008, "{write}");
        assert!(write.to_string().contains("may still apply"), "{write}");
        assert!(!read.to_string().contains("may still apply"), "{read}");
        let answered = patiently(true, quick, async { Ok(json!({"ok": 1})) }).await;
        assert_eq!(answered.expect("in time"), json!({"ok": 1}));
        assert!(writes("PURGE") && writes("MSG.DELETE") && !writes("INFO"));
    }
}
