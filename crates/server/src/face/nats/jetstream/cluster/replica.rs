//! This member's replica of a stream: the proposer of its publishes, the work its leader
//! does (expiry, schedules, the consumers' runtime and the saver of their states), and
//! proposing to its group.

use super::*;

/// Timed-work ticks between two membership steps of a group's leader (`membership`).
const CONVERGE_TICKS: u64 = 3;

/// The most messages one drop of leftovers names (a command stays far below the log's
/// entry limit).
const RETIRE_CHUNK: usize = 16_384;

/// Waits until this replica has applied everything committed before the call (a read on a
/// follower sees every acknowledged publish).
pub(super) async fn read_barrier(local: &Local) -> Result<(), ApiError> {
    local
        .replica
        .read_index()
        .await
        .map_err(|e| unavailable(&e))
}

/// Proposes one command to the stream's group; its outcome once applied.
pub(super) async fn propose(local: &Local, cmd: &Command<'_>) -> Result<Outcome, ApiError> {
    let bytes = local
        .replica
        .propose(cmd.encode())
        .await
        .map_err(|e| propose_error(&e))?;
    match Outcome::decode(&bytes) {
        Ok(Outcome::Refused(e)) => Err(e),
        Ok(o) => Ok(o),
        Err(e) => Err(unavailable(e)),
    }
}

pub(super) fn propose_error(e: &ProposeError) -> ApiError {
    match e {
        ProposeError::Unknown => ApiError::new(
            503,
            10008,
            "JetStream system temporarily unavailable: the stream's leader changed; the outcome is unknown",
        ),
        other => unavailable(other),
    }
}

pub(super) fn unexpected(o: &Outcome) -> ApiError {
    ApiError::new(500, 10049, format!("unexpected stream outcome {o:?}"))
}

/// Proposes a stream's publishes in the order they came, a batch at a time, and answers
/// each reply subject with its acknowledgement once applied.
pub(super) async fn propose_publishes(
    hub: Arc<Hub>,
    local: Arc<Local>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut stop = local.stop.subscribe();
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let mut bytes = first.payload.len();
        let mut batch = vec![first];
        while batch.len() < PROPOSE_BATCH && bytes < PROPOSE_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len() + p.headers.as_ref().map_or(0, Bytes::len);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // One command for the batch: the group stores them in the order they came.
        let cmd = Command::Publishes {
            now: now_ns(),
            msgs: batch
                .iter()
                .map(|p| {
                    (
                        p.subject.as_str(),
                        p.headers.as_deref().unwrap_or_default(),
                        &p.payload[..],
                    )
                })
                .collect(),
        };
        let results: Vec<Result<Outcome, ApiError>> = match propose(&local, &cmd).await {
            Ok(Outcome::Many(all)) if all.len() == batch.len() => all.into_iter().map(Ok).collect(),
            Ok(other) => batch.iter().map(|_| Err(unexpected(&other))).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        };
        let name = local.assignment().config.name;
        for (p, r) in batch.iter().zip(results) {
            let answer = match r {
                Ok(Outcome::Stored(ack)) => Ok(ack),
                Ok(Outcome::Refused(e)) => Err(e),
                Ok(other) => Err(unexpected(&other)),
                Err(e) => Err(e),
            };
            if let Some(reply) = &p.reply {
                let body = api::pub_ack(&name, answer);
                hub.inject(reply, None, &Bytes::from(body));
            }
        }
    }
}

/// Follows the group's leadership: while this member leads, it runs the stream's consumers
/// and expires messages past max_age and fires due schedules, with its clock.
pub(super) async fn timed_work(hub: Arc<Hub>, local: Arc<Local>, mut stop: watch::Receiver<bool>) {
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TIMED_WORK_EVERY) => {}
            _ = stop.changed() => {
                step_down(&hub, &local);
                return;
            }
        }
        let leads = local.replica.status().is_leader;
        let running = lock(&local.led).is_some();
        if !leads {
            if running {
                step_down(&hub, &local);
            }
            continue;
        }
        if !running {
            take_lead(&hub, &local).await;
        }
        ticks += 1;
        // The group's members brought in line with the assignment, a step at a time, beside
        // the timed work (a step may wait on a slow member).
        if ticks.is_multiple_of(CONVERGE_TICKS)
            && !local
                .converging
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let (hub, local) = (hub.clone(), local.clone());
            tokio::spawn(async move {
                super::membership::converge(&hub, &local).await;
                local
                    .converging
                    .store(false, std::sync::atomic::Ordering::Release);
            });
        }
        let now = now_ns();
        let due = local.group.read(|s| {
            let max_age = s.config().max_age;
            let expired = max_age > 0
                && s.store()
                    .oldest()
                    .is_some_and(|(_, t, _)| t < now.saturating_sub(max_age));
            let scheduled = s.next_schedule().is_some_and(|at| at <= now);
            (expired, scheduled)
        });
        let Some((expired, scheduled)) = due else {
            continue;
        };
        for (go, cmd) in [
            (expired, Command::Expire { now }),
            (scheduled, Command::FireSchedules { now }),
        ] {
            if go {
                if let Err(e) = propose(&local, &cmd).await {
                    tracing::debug!(error = %e, "JetStream: timed work not proposed");
                }
            }
        }
    }
}

/// Starts the stream's consumers here, this member having become the group's leader. A
/// fence goes through the group first (an empty consumers' entry with this leader's term):
/// once it is applied here, every state an earlier leader saved before it is too, and any it
/// saves after it is refused; the consumers are restored from the group's state then.
async fn take_lead(hub: &Arc<Hub>, local: &Arc<Local>) {
    let epoch = local.replica.status().term;
    let fence = Command::Consumers {
        epoch,
        entries: Vec::new(),
    };
    if propose(local, &fence).await.is_err() {
        return;
    }
    let a = local.assignment();
    let name = a.config.name.clone();
    let last = local
        .group
        .read(|s| s.store().state().last_seq)
        .unwrap_or_default();
    let restored = consumers::Consumers::from_saved(local.group.consumers(), last);
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = StreamHandle::replicated(&name, local.group.shared(), restored, tx);
    {
        // Set and announced under the lock step_down takes: never one without the other.
        let mut led = lock(&local.led);
        if *local.stop.borrow() || led.is_some() {
            // The replica stopped (or another turn took the lead) while the fence went.
            return;
        }
        *led = Some(handle.clone());
        let queue = leader_queue_of(&name);
        for s in leader_subjects(&name) {
            hub.routes.local_added(&s, Some(&queue));
        }
    }
    // Messages the consumers were done with that an earlier leader did not get dropped.
    let leftovers = consumers::leftovers(&handle);
    if !leftovers.is_empty() {
        tracing::info!(stream = %name, messages = leftovers.len(), "JetStream: dropping messages the consumers were done with");
        if let Some(saver) = &handle.saver {
            let _ = saver.send(SaverMsg::Retire(leftovers));
        }
    }
    tokio::spawn(save_consumers(
        hub.clone(),
        local.clone(),
        Arc::downgrade(&handle),
        epoch,
        rx,
    ));
    tokio::spawn(consumers::dispatch(Arc::downgrade(hub), handle.clone()));
    // New messages wake the consumers.
    let (mut applied, weak) = (local.group.applied(), Arc::downgrade(&handle));
    tokio::spawn(async move {
        while applied.changed().await.is_ok() {
            match weak.upgrade() {
                Some(h) if !h.is_closed() => h.wake.notify_one(),
                _ => return,
            }
        }
    });
    tracing::info!(stream = %name, epoch, consumers = handle.consumers().len(), "JetStream: leading the stream; its consumers run here");
}

/// Stops the stream's consumers here (leadership moved away, or the replica stops).
pub(super) fn step_down(hub: &Hub, local: &Local) {
    let name = local.assignment().config.name;
    let handle = {
        let mut led = lock(&local.led);
        let Some(handle) = led.take() else {
            return;
        };
        let queue = leader_queue_of(&name);
        for s in leader_subjects(&name) {
            hub.routes.local_removed(&s, Some(&queue));
        }
        handle
    };
    handle.close();
    tracing::info!(stream = %name, "JetStream: no longer leading the stream; its consumers stopped here");
}

/// Waits until every consumer state handed to the saver before is committed.
pub(super) async fn flush(handle: &StreamHandle) -> Result<(), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stepped_down = || unavailable("the stream's leader stepped down");
    handle
        .saver
        .as_ref()
        .ok_or_else(stepped_down)?
        .send(SaverMsg::Flush(tx))
        .map_err(|_| stepped_down())?;
    rx.await.map_err(|_| stepped_down())?
}

/// Proposes the consumers' changed states to the group, a batch at a time, then answers the
/// acks and flushes that waited for them. A state that could not be proposed is marked to
/// be saved again; the acks waiting on it are not answered (their clients retry).
///
/// Messages the consumers are done with (interest and work-queue retention) are dropped
/// through the group before the states handed after them are saved, so no committed state
/// has acknowledged a message whose drop is not committed before it; a drop that could not
/// be proposed is tried again with the next batch (and a next leader finds what is left).
async fn save_consumers(
    hub: Arc<Hub>,
    local: Arc<Local>,
    handle: std::sync::Weak<StreamHandle>,
    epoch: u64,
    mut rx: mpsc::UnboundedReceiver<SaverMsg>,
) {
    let mut retire: Vec<u64> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut msgs = vec![first];
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let mut states: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut replies = Vec::new();
        let mut flushes = Vec::new();
        for m in msgs {
            match m {
                SaverMsg::Save(name, state) => {
                    states.insert(name, state);
                }
                SaverMsg::Retire(seqs) => retire.extend(seqs),
                SaverMsg::Replies(r) => replies.extend(r),
                SaverMsg::Flush(tx) => flushes.push(tx),
            }
        }
        let result = if let Err(e) = drop_retired(&local, &mut retire).await {
            Err(e)
        } else if states.is_empty() {
            Ok(())
        } else {
            let entries = states
                .iter()
                .map(|(n, s)| (n.as_str(), s.as_slice()))
                .collect();
            propose(&local, &Command::Consumers { epoch, entries })
                .await
                .map(|_| ())
        };
        match &result {
            Ok(()) => {
                for r in replies {
                    hub.inject(&r, None, &Bytes::new());
                }
            }
            Err(e) => {
                tracing::warn!(stream = %local.assignment().config.name, error = %e, "JetStream: consumer states not saved; trying again");
                if let Some(h) = handle.upgrade() {
                    let mut consumers = h.consumers();
                    for name in states.keys() {
                        consumers.mark_dirty(name);
                    }
                }
            }
        }
        for f in flushes {
            let _ = f.send(result.clone());
        }
    }
}

/// Drops the messages in `retire` through the group, a bounded command at a time; what could
/// not be proposed stays in `retire`.
async fn drop_retired(local: &Local, retire: &mut Vec<u64>) -> Result<(), ApiError> {
    while !retire.is_empty() {
        let n = retire.len().min(RETIRE_CHUNK);
        let seqs = retire[..n].to_vec();
        propose(local, &Command::Retire { seqs }).await?;
        retire.drain(..n);
    }
    Ok(())
}
