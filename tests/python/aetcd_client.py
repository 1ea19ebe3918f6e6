"""Drives berth (or etcd) with aetcd, an asyncio Python etcd v3 client, through KV, txn,
leases, watch, lock, compaction and maintenance; exits non-zero on the first mismatch."""

import asyncio
import io
import sys
import uuid

import aetcd


async def main(host: str, port: int) -> None:
    passed = 0
    # A fresh prefix per run, so the script can run against a server that has data.
    run = uuid.uuid4().hex[:8].encode()

    def k(name: bytes) -> bytes:
        return b"py-" + run + b"/" + name

    def check(cond: bool, what: str) -> None:
        nonlocal passed
        if not cond:
            raise AssertionError(what)
        passed += 1

    async with aetcd.Client(host=host, port=port, timeout=10) as c:
        await c.put(k(b"a"), b"1")
        await c.put(k(b"b"), b"2")
        got = await c.get(k(b"a"))
        check(got is not None and got.value == b"1", "get returns the value")
        rng = await c.get_prefix(k(b""))
        check([kv.key for kv in rng] == [k(b"a"), k(b"b")], "prefix range in key order")
        prev = await c.put(k(b"a"), b"1b", prev_kv=True)
        check(prev.prev_kv.value == b"1", "put returns prev_kv")

        ok = await c.replace(k(b"a"), b"1b", b"swapped")
        check(ok, "replace (a compare-and-swap txn) succeeds on a match")
        ok = await c.replace(k(b"a"), b"nope", b"other")
        check(not ok, "replace fails on a mismatch")
        check((await c.get(k(b"a"))).value == b"swapped", "txn applied once")

        lease = await c.lease(60)
        await c.put(k(b"leased"), b"x", lease=lease)
        remaining = await lease.remaining_ttl()
        check(0 < remaining <= 60, "lease TTL reported")
        check(await lease.granted_ttl() == 60, "granted TTL reported")
        check(await lease.keys() == [k(b"leased")], "lease keys reported")
        refreshed = await lease.refresh()
        check(refreshed.TTL == 60, "keep-alive refreshes the TTL")
        await lease.revoke()
        check(await c.get(k(b"leased")) is None, "revoke deletes attached keys")

        watch_task = asyncio.create_task(c.watch_once(k(b"w"), timeout=10))
        await asyncio.sleep(0.3)
        await c.put(k(b"w"), b"event")
        event = await watch_task
        check(event.kv.value == b"event", "watch_once sees the put")

        async with c.lock(k(b"lock"), ttl=10) as lock:
            check(await lock.is_acquired(), "lock acquired")

        deleted = await c.delete(k(b"b"), prev_kv=True)
        check(deleted is not None and deleted.prev_kv.value == b"2", "delete returns prev_kv")

        status = await c.status()
        check(status.leader is not None, "status names a leader")
        members = [m async for m in c.members()]
        check(len(members) >= 1, "member list")
        revision = (await c.get(k(b"a"))).mod_revision
        await c.compact(revision)
        # aetcd hands the compaction back as the result (etcd behaves the same way).
        result = await c.watch_once(k(b"a"), timeout=3, start_revision=1)
        check(
            isinstance(result, aetcd.exceptions.RevisionCompactedError),
            "a watch from a compacted revision reports the compaction",
        )

        buf = io.BytesIO()
        await c.snapshot(buf)
        check(len(buf.getvalue()) % 512 == 32, "snapshot ends with the SHA-256 trailer")

    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    endpoint = sys.argv[1]
    h, p = endpoint.rsplit(":", 1)
    asyncio.run(main(h, int(p)))
