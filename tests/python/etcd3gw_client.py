"""Drives berth's JSON gateway (etcd's grpc-gateway API on the client port) with etcd3gw, the
HTTP etcd v3 client OpenStack uses: KV, prefixes, txn (replace), leases with keep-alive and
keys, watch, lock, status and members. Exits non-zero on the first mismatch."""

import sys
import threading
import time
import uuid

import etcd3gw


def main(host: str, port: int) -> None:
    passed = 0
    run = uuid.uuid4().hex[:8]

    def k(name: str) -> str:
        return f"gw-{run}/{name}"

    def check(cond: bool, what: str) -> None:
        nonlocal passed
        if not cond:
            raise AssertionError(what)
        passed += 1

    c = etcd3gw.client(host=host, port=port, timeout=10)
    check(c.api_path == "/v3/", f"discovers /v3/ from /version, got {c.api_path}")
    check(c.put(k("a"), "1"), "put")
    check(c.get(k("a")) == [b"1"], "get returns the value")
    c.put(k("b"), "2")
    pairs = sorted((v, m["key"]) for v, m in c.get_prefix(k("")))
    check([p[0] for p in pairs] == [b"1", b"2"], f"get_prefix: {pairs}")
    check(c.replace(k("a"), "1", "11"), "replace (txn) when the value matches")
    check(not c.replace(k("a"), "1", "12"), "replace refused when it does not")
    check(c.get(k("a")) == [b"11"], "txn wrote")
    check(c.create(k("new"), "x"), "create a new key")
    check(not c.create(k("new"), "y"), "create refuses an existing key")
    check(c.delete(k("b")), "delete")
    check(c.get(k("b")) == [], "deleted key is gone")

    lease = c.lease(30)
    check(lease.ttl() > 0, "lease ttl")
    c.put(k("leased"), "v", lease=lease)
    check(lease.keys() == [k("leased").encode()], f"lease keys: {lease.keys()}")
    check(lease.refresh() == 30, "keep-alive through the streamed endpoint")
    check(lease.revoke(), "revoke")
    check(c.get(k("leased")) == [], "revoking deletes the lease's keys")

    events, cancel = c.watch(k("w"))
    got = []
    done = threading.Event()

    def reader():
        for ev in events:
            got.append(ev)
            if len(got) == 2:
                done.set()
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.5)
    c.put(k("w"), "first")
    c.delete(k("w"))
    check(done.wait(10), f"watch events arrive: {got}")
    cancel()
    kinds = [ev.get("type", "PUT") for ev in got]
    check(kinds == ["PUT", "DELETE"], f"event kinds: {kinds}")
    check(got[0]["kv"]["value"] == b"first", f"event value: {got[0]}")
    check(got[0]["kv"]["key"] == k("w").encode(), f"event key: {got[0]}")

    lock = c.lock(ttl=30)
    check(lock.acquire(), "lock acquired")
    check(lock.is_acquired(), "lock held")
    check(lock.release(), "lock released")

    st = c.status()
    check(st["version"] == "3.5.0", f"status version: {st}")
    members = c.members()
    check(len(members) == 1 and members[0]["clientURLs"], f"members: {members}")

    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    endpoint = sys.argv[1]
    h, p = endpoint.rsplit(":", 1)
    main(h, int(p))
