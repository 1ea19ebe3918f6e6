"""nats-py against berth's NATS face: publish/subscribe with wildcards, queue groups, request/reply,
no responders, headers, auto-unsubscribe, drain, and echo off. Usage: nats_client.py nats://HOST:PORT.
Prints one line per check and "N passed, M failed"; exits non-zero on any failure."""

import asyncio
import sys
import traceback

import nats
from nats.errors import NoRespondersError

url = sys.argv[1]
passed = 0
failed = 0


async def case(fn):
    global passed, failed
    try:
        await asyncio.wait_for(fn(), 20)
        passed += 1
        print(f"ok   {fn.__name__}")
    except Exception:  # noqa: BLE001 - report every failure, go on
        failed += 1
        print(f"FAIL {fn.__name__}")
        traceback.print_exc()


async def collect(sub, n, timeout=2.0):
    out = []
    for _ in range(n):
        out.append(await sub.next_msg(timeout=timeout))
    return out


async def wildcards_reach_their_subscribers():
    nc = await nats.connect(url)
    assert nc.connected_server_version.major == 2 and nc.connected_server_version.minor == 10
    one = await nc.subscribe("orders.*")
    rest = await nc.subscribe("orders.>")
    exact = await nc.subscribe("orders.eu.paid")
    await nc.flush()
    await nc.publish("orders.eu", b"a")
    await nc.publish("orders.eu.paid", b"b")
    await nc.flush()
    assert [m.data for m in await collect(one, 1)] == [b"a"]
    assert sorted(m.data for m in await collect(rest, 2)) == [b"a", b"b"]
    assert [m.subject for m in await collect(exact, 1)] == ["orders.eu.paid"]
    for s in (one, rest, exact):
        try:
            await s.next_msg(timeout=0.2)
            raise AssertionError(f"extra message on {s.subject}")
        except nats.errors.TimeoutError:
            pass
    await nc.close()


async def a_queue_group_shares_the_work_and_plain_subscribers_see_all():
    workers = [await nats.connect(url) for _ in range(3)]
    seen = [[] for _ in workers]
    for i, w in enumerate(workers):
        async def handler(msg, i=i):
            seen[i].append(msg.data)
        await w.subscribe("jobs", queue="workers", cb=handler)
        await w.flush()
    audit = await nats.connect(url)
    log = await audit.subscribe("jobs")
    await audit.flush()
    pub = await nats.connect(url)
    for i in range(300):
        await pub.publish("jobs", str(i).encode())
    await pub.flush()
    assert len(await collect(log, 300)) == 300
    for _ in range(100):
        if sum(len(s) for s in seen) == 300:
            break
        await asyncio.sleep(0.05)
    counts = [len(s) for s in seen]
    assert sum(counts) == 300, counts
    assert all(c > 30 for c in counts), f"uneven share: {counts}"
    assert len(set(x for s in seen for x in s)) == 300, "a job went to two workers"
    for c in workers + [audit, pub]:
        await c.close()


async def requests_get_replies_and_nobody_home_is_no_responders():
    svc = await nats.connect(url)

    async def echo(msg):
        await msg.respond(b"pong:" + msg.data)

    await svc.subscribe("svc.echo", cb=echo)
    await svc.flush()
    nc = await nats.connect(url)
    for i in range(20):
        r = await nc.request("svc.echo", str(i).encode(), timeout=2)
        assert r.data == b"pong:" + str(i).encode(), r.data
    try:
        await nc.request("nobody.home", b"x", timeout=2)
        raise AssertionError("a request nobody listens to was answered")
    except NoRespondersError:
        pass
    await nc.close()
    await svc.close()


async def headers_travel_with_the_message():
    nc = await nats.connect(url)
    sub = await nc.subscribe("h.test")
    await nc.flush()
    await nc.publish("h.test", b"body", headers={"Trace-Id": "abc", "X": "1"})
    m = (await collect(sub, 1))[0]
    assert m.data == b"body"
    assert m.headers == {"Trace-Id": "abc", "X": "1"}, m.headers
    await nc.close()


async def auto_unsubscribe_and_drain():
    nc = await nats.connect(url)
    sub = await nc.subscribe("limited")
    await sub.unsubscribe(limit=2)
    await nc.flush()
    for i in range(5):
        await nc.publish("limited", str(i).encode())
    await nc.flush()
    got = []
    try:
        while True:
            got.append((await sub.next_msg(timeout=0.5)).data)
    except Exception:  # noqa: BLE001 - timeout or closed subscription both end it
        pass
    assert got == [b"0", b"1"], got
    other = await nc.subscribe("drained")
    await nc.flush()
    await nc.drain()
    assert nc.is_closed
    del other


async def echo_off_hides_own_messages():
    nc = await nats.connect(url, no_echo=True)
    mine = await nc.subscribe("echo.test")
    await nc.flush()
    other = await nats.connect(url)
    await other.publish("echo.test", b"theirs")
    await other.flush()
    await nc.publish("echo.test", b"mine")
    await nc.flush()
    assert [m.data for m in await collect(mine, 1)] == [b"theirs"]
    try:
        m = await mine.next_msg(timeout=0.3)
        raise AssertionError(f"own message echoed: {m.data}")
    except nats.errors.TimeoutError:
        pass
    await nc.close()
    await other.close()


async def main():
    for fn in (
        wildcards_reach_their_subscribers,
        a_queue_group_shares_the_work_and_plain_subscribers_see_all,
        requests_get_replies_and_nobody_home_is_no_responders,
        headers_travel_with_the_message,
        auto_unsubscribe_and_drain,
        echo_off_hides_own_messages,
    ):
        await case(fn)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


asyncio.run(main())
