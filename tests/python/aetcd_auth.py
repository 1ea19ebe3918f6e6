"""Drives berth with auth on through aetcd (asyncio, gRPC): a user logs in with a password,
works inside its prefix, is refused outside it with etcd's text, and a wrong password fails
to connect. The server has root/rootpw and alice/apw (read-write on app/, read on cfg/).
Exits non-zero on the first mismatch."""

import asyncio
import sys

import aetcd
from aetcd import exceptions


async def main(host: str, port: int) -> None:
    passed = 0

    def check(cond: bool, what: str) -> None:
        nonlocal passed
        if not cond:
            raise AssertionError(what)
        passed += 1

    async with aetcd.Client(host=host, port=port, timeout=10, username="alice", password="apw") as c:
        await c.put(b"app/py", b"1")
        got = await c.get(b"app/py")
        check(got is not None and got.value == b"1", "alice reads her own key")
        try:
            await c.put(b"cfg/py", b"1")
            check(False, "a put on a read-only prefix is refused")
        except exceptions.ClientError as e:
            check("etcdserver: permission denied" in str(e), f"denial text: {e}")
        try:
            await c.get(b"secret")
            check(False, "a get outside the grants is refused")
        except exceptions.ClientError as e:
            check("etcdserver: permission denied" in str(e), f"denial text: {e}")

    try:
        async with aetcd.Client(host=host, port=port, timeout=10, username="alice", password="nope") as c:
            await c.get(b"app/py")
        check(False, "a wrong password fails")
    except exceptions.ClientError as e:
        check("authentication failed, invalid user ID or password" in str(e), f"login text: {e}")

    async with aetcd.Client(host=host, port=port, timeout=10) as c:
        try:
            await c.get(b"app/py")
            check(False, "no credential is refused")
        except exceptions.ClientError as e:
            check("etcdserver: user name is empty" in str(e), f"anonymous text: {e}")

    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    endpoint = sys.argv[1]
    h, p = endpoint.rsplit(":", 1)
    asyncio.run(main(h, int(p)))
