"""nats-py's JetStream API against berth: streams (create, idempotent create, conflicting
create, update, info with subjects, names, list, purge with filter and keep, delete), publish
acks with Nats-Msg-Id deduplication and the expected-* headers, message get (by sequence, last
by subject, next by subject) and delete, limits (max_msgs with discard old and new,
max_msgs_per_subject, max_msg_size), a KV bucket (put, create, update, get, delete, purge,
history kept per key, keys, history, watch), pull consumers (fetch, ack, nak with delay,
redelivery after ack_wait up to max_deliver, ack_sync, counters), push and ordered
consumers, consumer listing and deletion, an object store (put, get, list, delete), and
work-queue and interest retention. Usage: jetstream_client.py nats://HOST:PORT [REPLICAS]: with
REPLICAS (a cluster), every stream, bucket and store is created with that many replicas.
Prints one line per check and "N passed, M failed"; exits non-zero on any failure."""

import asyncio
import sys
import traceback

import nats
from nats.js.api import ConsumerConfig, DiscardPolicy, StreamConfig
from nats.js.errors import (BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError,
                            NotFoundError, ServiceUnavailableError)
from nats.errors import NoRespondersError

url = sys.argv[1]
REPLICAS = int(sys.argv[2]) if len(sys.argv) > 2 else 0
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


def with_replicas():
    """Every stream nats-py creates or updates (buckets' and stores' too) gets REPLICAS."""
    from nats.js.manager import JetStreamManager
    add, update = JetStreamManager.add_stream, JetStreamManager.update_stream

    async def add_stream(self, config=None, **params):
        params.setdefault("num_replicas", REPLICAS)
        return await add(self, config, **params)

    async def update_stream(self, config=None, **params):
        params.setdefault("num_replicas", REPLICAS)
        return await update(self, config, **params)

    JetStreamManager.add_stream = add_stream
    JetStreamManager.update_stream = update_stream


async def main():
    if REPLICAS:
        with_replicas()
    nc = await nats.connect(url)
    js = nc.jetstream()
    assert nc._server_info["jetstream"] is True, nc._server_info

    async def streams_are_created_updated_listed_and_deleted():
        info = await js.add_stream(name="ORDERS", subjects=["orders.>"], max_msgs=1000,
                                   duplicate_window=60)
        assert info.config.max_msgs == 1000 and info.config.max_bytes == -1, info.config
        assert info.config.duplicate_window == 60 and info.state.messages == 0, info
        again = await js.add_stream(name="ORDERS", subjects=["orders.>"], max_msgs=1000,
                                    duplicate_window=60)
        assert again.config.name == "ORDERS"
        try:
            await js.add_stream(name="ORDERS", subjects=["orders.>"], max_msgs=5)
            raise AssertionError("a different config was accepted")
        except BadRequestError as e:
            assert e.err_code == 10058, e
        try:
            await js.add_stream(name="OTHER", subjects=["orders.new"])
            raise AssertionError("overlapping subjects were accepted")
        except BadRequestError as e:
            assert e.err_code == 10065, e
        updated = await js.update_stream(name="ORDERS", subjects=["orders.>", "returns.*"],
                                         max_msgs=2000, duplicate_window=60)
        assert updated.config.subjects == ["orders.>", "returns.*"], updated.config
        assert await js.find_stream_name_by_subject("returns.x") == "ORDERS"
        try:
            await js.find_stream_name_by_subject("nothing.here")
            raise AssertionError("a stream was found for nothing")
        except NotFoundError:
            pass
        names = [s.config.name for s in await js.streams_info()]
        assert "ORDERS" in names, names
        await js.add_stream(name="TMP", subjects=["tmp.>"])
        assert await js.delete_stream("TMP") is True
        try:
            await js.stream_info("TMP")
            raise AssertionError("a deleted stream answered")
        except NotFoundError as e:
            assert e.err_code == 10059, e

    async def publishes_are_acknowledged_and_deduplicated():
        acks = [await js.publish(f"orders.{i % 2}", f"m{i}".encode(),
                                 headers={"Nats-Msg-Id": f"id{i}"}) for i in range(4)]
        assert [a.seq for a in acks] == [1, 2, 3, 4], acks
        assert all(a.stream == "ORDERS" and not a.duplicate for a in acks), acks
        dup = await js.publish("orders.0", b"again", headers={"Nats-Msg-Id": "id1"})
        assert dup.seq == 2 and dup.duplicate, dup
        state = (await js.stream_info("ORDERS")).state
        assert (state.messages, state.first_seq, state.last_seq) == (4, 1, 4), state

    async def expected_headers_guard_publishes():
        try:
            await js.publish("orders.0", b"x", headers={"Nats-Expected-Last-Sequence": "1"})
            raise AssertionError("a wrong last sequence was accepted")
        except BadRequestError as e:
            assert (e.err_code, e.description) == (10071, "wrong last sequence: 4"), e
        ack = await js.publish("orders.0", b"x", headers={"Nats-Expected-Last-Sequence": "4"})
        assert ack.seq == 5
        try:
            await js.publish("orders.0", b"x", stream="OTHER")
            raise AssertionError("a wrong expected stream was accepted")
        except BadRequestError as e:
            assert e.err_code == 10060, e

    async def messages_are_read_and_deleted():
        m = await js.get_msg("ORDERS", seq=2)
        assert (m.subject, m.data, m.headers) == ("orders.1", b"m1", {"Nats-Msg-Id": "id1"}), m
        last = await js.get_last_msg("ORDERS", "orders.1")
        assert (last.seq, last.data) == (4, b"m3"), last
        nxt = await js.get_msg("ORDERS", seq=2, next=True, subject="orders.0")
        assert nxt.seq == 3, nxt
        await js.delete_msg("ORDERS", 3)
        try:
            await js.get_msg("ORDERS", seq=3)
            raise AssertionError("a deleted message was read")
        except NotFoundError as e:
            assert e.err_code == 10037, e
        info = await js.stream_info("ORDERS", subjects_filter="orders.>")
        assert info.state.subjects == {"orders.0": 2, "orders.1": 2}, info.state
        assert info.state.num_deleted == 1, info.state

    async def purges_take_a_filter_and_keep():
        purged = await js.purge_stream("ORDERS", subject="orders.1", keep=1)
        assert purged is True
        state = (await js.stream_info("ORDERS")).state
        assert state.messages == 3, state
        await js.purge_stream("ORDERS")
        state = (await js.stream_info("ORDERS")).state
        assert (state.messages, state.first_seq, state.last_seq) == (0, 6, 5), state

    async def limits_discard_old_or_refuse_new():
        await js.add_stream(name="LIM", subjects=["lim.>"], max_msgs=3,
                            max_msgs_per_subject=2, max_msg_size=64)
        for s in ["lim.a", "lim.a", "lim.a", "lim.b", "lim.c"]:
            await js.publish(s, b"x")
        info = await js.stream_info("LIM")
        assert (info.state.messages, info.state.first_seq) == (3, 3), info.state
        try:
            await js.publish("lim.a", b"x" * 100)
            raise AssertionError("an oversized message was stored")
        except BadRequestError as e:
            assert e.err_code == 10054, e
        await js.add_stream(StreamConfig(name="FULL", subjects=["full"], max_msgs=1,
                                         discard=DiscardPolicy.NEW))
        await js.publish("full", b"1")
        try:
            await js.publish("full", b"2")
            raise AssertionError("discard new stored past max_msgs")
        except ServiceUnavailableError as e:
            assert (e.err_code, e.description) == (10077, "maximum messages exceeded"), e

    async def key_value_buckets_work_on_streams():
        kv = await js.create_key_value(bucket="cfg", history=2)
        r1 = await kv.put("db.url", b"pg://a")
        r2 = await kv.update("db.url", b"pg://b", last=r1)
        assert r2 == r1 + 1
        try:
            await kv.update("db.url", b"pg://c", last=r1)
            raise AssertionError("a stale update was accepted")
        except KeyWrongLastSequenceError:
            pass
        try:
            await kv.create("db.url", b"x")
            raise AssertionError("create over an existing key was accepted")
        except KeyWrongLastSequenceError:
            pass
        e = await kv.get("db.url")
        assert (e.value, e.revision) == (b"pg://b", r2), e
        assert (await kv.get("db.url", revision=r1)).value == b"pg://a"
        await kv.put("db.url", b"pg://d")
        state = (await js.stream_info("KV_cfg")).state
        assert state.messages == 2, state
        await kv.delete("db.url")
        try:
            await kv.get("db.url")
            raise AssertionError("a deleted key was read")
        except KeyNotFoundError:
            pass
        await kv.create("db.url", b"again")
        await kv.purge("db.url")
        state = (await js.stream_info("KV_cfg")).state
        assert state.messages == 1, state

    async def pull_consumers_deliver_ack_and_redeliver():
        await js.add_stream(name="WORK", subjects=["work.>"])
        for i in range(4):
            await js.publish(f"work.{i % 2}", f"w{i}".encode())
        try:
            await js.consumer_info("WORK", "worker")
            raise AssertionError("a missing consumer answered")
        except NotFoundError as e:
            assert e.err_code == 10014, e
        psub = await js.pull_subscribe("work.>", durable="worker",
                                       config=ConsumerConfig(ack_wait=1, max_deliver=2))
        msgs = await psub.fetch(3, timeout=2)
        assert [m.data for m in msgs] == [b"w0", b"w1", b"w2"], msgs
        md = msgs[0].metadata
        assert (md.sequence.stream, md.sequence.consumer, md.num_delivered, md.num_pending) == (1, 1, 1, 3), md
        await msgs[0].ack_sync()
        await msgs[1].nak(delay=0.3)
        # msgs[2] is left to time out (ack_wait 1 s).
        info = await js.consumer_info("WORK", "worker")
        assert (info.delivered.stream_seq, info.ack_floor.stream_seq) == (3, 1), info
        assert (info.num_ack_pending, info.num_pending) == (2, 1), info
        got = {}
        deadline = asyncio.get_running_loop().time() + 5
        while len(got) < 3 and asyncio.get_running_loop().time() < deadline:
            try:
                for m in await psub.fetch(3, timeout=0.5):
                    got[m.data] = m.metadata.num_delivered
                    await m.ack()
            except nats.errors.TimeoutError:
                pass
        assert got == {b"w1": 2, b"w2": 2, b"w3": 1}, got
        info = await js.consumer_info("WORK", "worker")
        assert (info.num_ack_pending, info.num_redelivered, info.num_pending) == (0, 0, 0), info
        assert info.ack_floor.stream_seq == 4, info
        try:
            await psub.fetch(1, timeout=0.5)
            raise AssertionError("an empty consumer delivered")
        except nats.errors.TimeoutError:
            pass

    async def push_and_ordered_consumers_deliver():
        got = []
        done = asyncio.Event()

        async def cb(m):
            got.append(m.data)
            await m.ack()
            if len(got) == 3:
                done.set()
        await js.subscribe("work.0", durable="pusher", cb=cb)
        await js.publish("work.0", b"live")
        await asyncio.wait_for(done.wait(), 5)
        assert got == [b"w0", b"w2", b"live"], got
        osub = await js.subscribe("work.>", ordered_consumer=True)
        seen = [(await osub.next_msg(timeout=2)).data for _ in range(5)]
        assert seen == [b"w0", b"w1", b"w2", b"w3", b"live"], seen
        names = sorted(ci.name for ci in await js.consumers_info("WORK"))
        assert "pusher" in names and "worker" in names, names
        assert await js.delete_consumer("WORK", "worker") is True
        try:
            await js.consumer_info("WORK", "worker")
            raise AssertionError("a deleted consumer answered")
        except NotFoundError:
            pass

    async def flow_controlled_push_consumers_get_everything():
        # 24 messages of 512 KiB: three times the server's 4 MiB flow-control window, so
        # nats-py must answer its requests for the rest to come.
        await js.add_stream(name="BIG", subjects=["big"])
        for i in range(24):
            await js.publish("big", bytes([65 + i % 26]) * (512 << 10))
        osub = await js.subscribe("big", ordered_consumer=True)
        got = [await osub.next_msg(timeout=5) for _ in range(24)]
        assert [m.metadata.sequence.stream for m in got] == list(range(1, 25))
        await osub.unsubscribe()
        seen = []
        done = asyncio.Event()

        async def cb(m):
            seen.append(len(m.data))
            if len(seen) == 24:
                done.set()
        await js.subscribe("big", cb=cb, flow_control=True, idle_heartbeat=0.5,
                           config=ConsumerConfig(ack_policy="none"))
        await asyncio.wait_for(done.wait(), 10)
        assert seen == [512 << 10] * 24, seen
        await js.delete_stream("BIG")

    async def key_value_watchers_keys_and_history():
        kv = await js.create_key_value(bucket="watched", history=5)
        await kv.put("a", b"1")
        await kv.put("b", b"2")
        await kv.put("a", b"3")
        assert sorted(await kv.keys()) == ["a", "b"]
        hist = await kv.history("a")
        assert [e.value for e in hist] == [b"1", b"3"], hist
        w = await kv.watchall()
        initial = []
        async for e in w:
            if e is None:
                break
            initial.append((e.key, e.value))
        assert sorted(initial) == [("a", b"3"), ("b", b"2")], initial
        await kv.put("c", b"9")
        e = await w.updates(timeout=2)
        assert (e.key, e.value) == ("c", b"9"), e
        await w.stop()

    async def object_store_puts_gets_lists_and_deletes():
        obs = await js.create_object_store("files")
        data = bytes(range(256)) * 1200  # 300 KiB: three chunks
        info = await obs.put("a.bin", data)
        assert (info.size, info.chunks) == (len(data), 3), info
        assert (await obs.get("a.bin")).data == data
        assert [o.name for o in await obs.list()] == ["a.bin"]
        await obs.delete("a.bin")
        try:
            await obs.get("a.bin")
            raise AssertionError("a deleted object was read")
        except nats.js.errors.ObjectNotFoundError:
            pass

    async def work_queue_and_interest_streams_drop_what_is_acked():
        from nats.js.api import RetentionPolicy
        await js.add_stream(name="WQ", subjects=["wq.>"], retention=RetentionPolicy.WORK_QUEUE)
        for i in range(3):
            await js.publish("wq.job", f"j{i}".encode())
        psub = await js.pull_subscribe("wq.>", durable="workers")
        msgs = await psub.fetch(2, timeout=2)
        for m in msgs:
            await m.ack_sync()
        state = (await js.stream_info("WQ")).state
        assert (state.messages, state.first_seq) == (1, 3), state
        try:
            await js.add_consumer("WQ", ConsumerConfig(durable_name="other", ack_policy="explicit"))
            raise AssertionError("an overlapping work-queue consumer was accepted")
        except BadRequestError as e:
            assert e.err_code == 10100, e
        await js.add_stream(name="INT", subjects=["int.>"], retention=RetentionPolicy.INTEREST)
        await js.publish("int.x", b"nobody listens")
        assert (await js.stream_info("INT")).state.messages == 0
        a = await js.pull_subscribe("int.>", durable="a")
        b = await js.pull_subscribe("int.>", durable="b")
        await js.publish("int.x", b"both")
        assert (await js.stream_info("INT")).state.messages == 1
        (ma,) = await a.fetch(1, timeout=2)
        await ma.ack_sync()
        assert (await js.stream_info("INT")).state.messages == 1, "b has not acked"
        (mb,) = await b.fetch(1, timeout=2)
        await mb.ack_sync()
        assert (await js.stream_info("INT")).state.messages == 0, "both acked"

    async def what_is_not_served_finds_no_responders():
        try:
            await nc.request("$JS.API.STREAM.SNAPSHOT.ORDERS", b"", timeout=2)
            raise AssertionError("snapshots answered")
        except NoRespondersError:
            pass
        try:
            await nc.request("$JS.API.NOPE", b"", timeout=2)
            raise AssertionError("an unknown API subject answered")
        except NoRespondersError:
            pass
        info = await js.account_info()
        assert info.streams >= 3 and info.api.total > 10, info

    for fn in [streams_are_created_updated_listed_and_deleted,
               publishes_are_acknowledged_and_deduplicated,
               expected_headers_guard_publishes,
               messages_are_read_and_deleted,
               purges_take_a_filter_and_keep,
               limits_discard_old_or_refuse_new,
               key_value_buckets_work_on_streams,
               pull_consumers_deliver_ack_and_redeliver,
               push_and_ordered_consumers_deliver,
               flow_controlled_push_consumers_get_everything,
               key_value_watchers_keys_and_history,
               object_store_puts_gets_lists_and_deletes,
               work_queue_and_interest_streams_drop_what_is_acked,
               what_is_not_served_finds_no_responders]:
        await case(fn)
    await nc.close()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


asyncio.run(main())
