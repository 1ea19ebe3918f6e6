"""py-consul against berth's Consul API: registration, health, discovery, blocking queries,
KV (the etcd keyspace), transactions, sessions and locks, and bad input. Usage: consul_client.py HOST:PORT.
Prints one line per check and "N passed, M failed"; exits non-zero on any failure."""

import sys
import threading
import time
import traceback

import consul
from consul import Check

host, port = sys.argv[1].rsplit(":", 1)
c = consul.Consul(host=host, port=int(port))
passed = 0
failed = 0


def case(fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok   {fn.__name__}")
    except Exception:  # noqa: BLE001 - report every failure, go on
        failed += 1
        print(f"FAIL {fn.__name__}")
        traceback.print_exc()
    return fn


def wait_until(pred, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@case
def agent_self_names_the_datacenter():
    me = c.agent.self()
    assert me["Config"]["Datacenter"] == "dc1", me
    assert me["Config"]["NodeName"], me


@case
def register_ttl_pass_and_discover():
    c.agent.service.register(
        "web", service_id="web1", address="10.0.0.5", port=8080, tags=["v1", "blue"],
        check=Check.ttl("10s"),
    )
    c.agent.service.register(
        "web", service_id="web2", address="10.0.0.6", port=8080, tags=["v1"],
        check=Check.ttl("10s"),
    )
    _, nodes = c.health.service("web")
    assert sorted(n["Service"]["ID"] for n in nodes) == ["web1", "web2"], nodes
    _, passing = c.health.service("web", passing=True)
    assert passing == [], "new TTL checks start critical"
    c.agent.check.ttl_pass("service:web1", notes="all good")
    _, passing = c.health.service("web", passing=True)
    assert [n["Service"]["ID"] for n in passing] == ["web1"], passing
    check = [k for k in passing[0]["Checks"] if k["CheckID"] == "service:web1"][0]
    assert check["Status"] == "passing" and check["Output"] == "all good", check
    assert check["ServiceTags"] == ["v1", "blue"], check
    _, tagged = c.health.service("web", tag="blue")
    assert [n["Service"]["ID"] for n in tagged] == ["web1"], tagged
    services = c.agent.services()
    assert services["web1"]["Port"] == 8080 and services["web1"]["Address"] == "10.0.0.5"
    checks = c.agent.checks()
    assert checks["service:web2"]["Status"] == "critical", checks


@case
def catalog_views_agree():
    _, services = c.catalog.services()
    assert sorted(services["web"]) == ["blue", "v1"], services
    _, instances = c.catalog.service("web")
    assert [i["ServiceID"] for i in instances] == ["web1", "web2"], instances
    assert instances[0]["ServiceAddress"] == "10.0.0.5"
    _, nodes = c.catalog.nodes()
    assert len(nodes) >= 1 and nodes[0]["Node"], nodes
    _, node = c.catalog.node(nodes[0]["Node"])
    assert "web1" in node["Services"], node
    assert c.catalog.datacenters() == ["dc1"]
    _, checks = c.health.checks("web")
    assert sorted(k["CheckID"] for k in checks) == ["service:web1", "service:web2"], checks
    _, critical = c.health.state("critical")
    assert "service:web2" in [k["CheckID"] for k in critical], critical


@case
def blocking_query_returns_on_change_only():
    index, _ = c.health.service("web")
    out = {}

    def block():
        t0 = time.time()
        out["index"], out["nodes"] = c.health.service("web", index=index, wait="20s")
        out["took"] = time.time() - t0

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.5)
    # A change of another service does not answer it.
    c.agent.service.register("other", service_id="other1", port=1)
    time.sleep(0.5)
    assert t.is_alive(), "a change of another service woke the query"
    c.agent.check.ttl_pass("service:web2")
    t.join(10)
    assert not t.is_alive(), "the blocking query did not return on the change"
    assert int(out["index"]) > int(index), out
    assert out["took"] < 5, out
    # A query that times out returns the same index.
    i2, _ = c.health.service("web")
    t0 = time.time()
    i3, _ = c.health.service("web", index=i2, wait="1s")
    assert i3 == i2 and 0.9 < time.time() - t0 < 3, (i2, i3)


@case
def maintenance_and_deregister():
    c.agent.service.maintenance("web1", "true", reason="upgrading")
    _, passing = c.health.service("web", passing=True)
    assert "web1" not in [n["Service"]["ID"] for n in passing], passing
    c.agent.service.maintenance("web1", "false")
    c.agent.check.ttl_pass("service:web1")
    _, passing = c.health.service("web", passing=True)
    assert "web1" in [n["Service"]["ID"] for n in passing], passing
    c.agent.service.deregister("web2")
    c.agent.service.deregister("other1")
    _, nodes = c.health.service("web")
    assert [n["Service"]["ID"] for n in nodes] == ["web1"], nodes
    assert "service:web2" not in c.agent.checks()


@case
def kv_put_get_recurse_keys_cas_delete():
    assert c.kv.put("app/config/a", "1")
    assert c.kv.put("app/config/b", "2", flags=7)
    index, item = c.kv.get("app/config/b")
    assert item["Value"] == b"2" and item["Flags"] == 7, item
    _, items = c.kv.get("app/", recurse=True)
    assert [i["Key"] for i in items] == ["app/config/a", "app/config/b"], items
    _, keys = c.kv.get("app/", keys=True, separator="/")
    assert keys == ["app/config/"], keys
    assert not c.kv.put("app/config/b", "3", cas=int(item["ModifyIndex"]) - 1)
    assert c.kv.put("app/config/b", "3", cas=item["ModifyIndex"])
    assert not c.kv.put("app/config/b", "4", cas=0), "cas=0 only creates"
    _, missing = c.kv.get("app/none")
    assert missing is None
    assert c.kv.delete("app/config/a")
    _, items = c.kv.get("app/", recurse=True)
    assert [i["Key"] for i in items] == ["app/config/b"], items
    assert c.kv.delete("app/", recurse=True)
    _, items = c.kv.get("app/", recurse=True)
    assert items is None


@case
def kv_blocking_get_wakes_on_delete():
    c.kv.put("watched/k", "v")
    index, _ = c.kv.get("watched/k")
    out = {}

    def block():
        out["r"] = c.kv.get("watched/k", index=index, wait="20s")

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.3)
    c.kv.delete("watched/k")
    t.join(10)
    assert not t.is_alive(), "a delete did not wake the blocked get"
    assert out["r"][1] is None and int(out["r"][0]) > int(index), out


@case
def sessions_and_locks():
    s1 = c.session.create(name="one", ttl=10, lock_delay=0)
    s2 = c.session.create(name="two", lock_delay=0)
    _, info = c.session.info(s1)
    assert info["Name"] == "one" and info["TTL"] == "10s", info
    assert {s["ID"] for s in c.session.list()[1]} >= {s1, s2}
    assert c.session.renew(s1)["ID"] == s1
    assert c.kv.put("locks/leader", "me", acquire=s1)
    assert c.kv.put("locks/leader", "me again", acquire=s1), "the holder acquires again"
    assert not c.kv.put("locks/leader", "you", acquire=s2), "another session is refused"
    _, item = c.kv.get("locks/leader")
    assert item["Session"] == s1 and item["LockIndex"] == 1, item
    assert not c.kv.put("locks/leader", "x", release=s2)
    assert c.kv.put("locks/leader", "bye", release=s1)
    _, item = c.kv.get("locks/leader")
    assert "Session" not in item and item["Value"] == b"bye", item
    assert c.kv.put("locks/leader", "you", acquire=s2)
    _, item = c.kv.get("locks/leader")
    assert item["LockIndex"] == 2, item
    # Destroying the holder releases the lock.
    c.session.destroy(s2)
    assert wait_until(lambda: "Session" not in c.kv.get("locks/leader")[1])
    assert c.session.info(s2)[1] is None
    # A delete-behavior session deletes what it held when it ends.
    s3 = c.session.create(behavior="delete", lock_delay=0)
    assert c.kv.put("locks/ephemeral", "x", acquire=s3)
    c.session.destroy(s3)
    assert wait_until(lambda: c.kv.get("locks/ephemeral")[1] is None)
    c.session.destroy(s1)
    c.kv.delete("locks/", recurse=True)


@case
def status_leader_and_peers():
    leader = c.status.leader()
    assert ":" in leader, leader
    assert leader in c.status.peers()


@case
def bad_input_is_a_clear_400():
    import requests  # py-consul's own dependency

    base = f"http://{host}:{port}"
    for body, want in [
        ("{not json", "decode"),
        ('{"Name":"x","Check":{"Interval":"10s"}}', "Must provide"),
        ('{"Name":"x","Check":{"HTTP":"http://127.0.0.1:1/","Interval":"-5s"}}', "negative"),
        ('{"Name":"x","Check":{"Args":["/bin/true"],"Interval":"5s"}}', "not supported"),
        ('{"Name":"x","Port":70000}', "port"),
        ('{"ID":"x"}', "Missing service name"),
    ]:
        r = requests.put(f"{base}/v1/agent/service/register", data=body)
        assert r.status_code == 400 and want in r.text, (body, r.status_code, r.text)
        assert r.headers.get("X-Consul-Index"), r.headers
    many = '{"Name":"x","Checks":[' + ",".join(['{"TTL":"5s"}'] * 10000) + "]}"
    r = requests.put(f"{base}/v1/agent/service/register", data=many)
    assert r.status_code == 400 and "at most" in r.text, r.text
    assert "x" not in c.agent.services(), "nothing registered half-way"
    r = requests.get(f"{base}/v1/health/service/web?index=999999999")
    assert r.status_code == 400 and "ahead" in r.text, r.text
    r = requests.get(f"{base}/v1/kv/does/not/exist")
    assert r.status_code == 404 and int(r.headers["X-Consul-Index"]) >= 1, r.headers


@case
def txn_commits_all_or_nothing():
    import base64

    import requests  # py-consul's own dependency

    def b64(v):
        return base64.b64encode(v.encode()).decode()

    c.kv.put("txn/a", "old")
    index = c.kv.get("txn/a")[1]["ModifyIndex"]
    r = c.txn.put([
        {"KV": {"Verb": "check-index", "Key": "txn/a", "Index": index}},
        {"KV": {"Verb": "set", "Key": "txn/a", "Value": b64("new"), "Flags": 7}},
        {"KV": {"Verb": "cas", "Key": "txn/b", "Value": b64("b"), "Index": 0}},
        {"KV": {"Verb": "get", "Key": "txn/a"}},
        {"KV": {"Verb": "get-tree", "Key": "txn/"}},
    ])
    assert r["Errors"] is None, r
    kvs = [x["KV"] for x in r["Results"]]
    assert [k["Key"] for k in kvs] == ["txn/a", "txn/a", "txn/b", "txn/a", "txn/a", "txn/b"], kvs
    assert kvs[1]["Value"] is None and kvs[3]["Value"] == b64("new"), kvs
    assert kvs[1]["Flags"] == 7 and kvs[1]["ModifyIndex"] == kvs[2]["ModifyIndex"] > index, kvs
    _, item = c.kv.get("txn/a")
    assert item["Value"] == b"new" and item["Flags"] == 7, item
    # One failing op: 409, every error listed, nothing written.
    base = f"http://{host}:{port}"
    r = requests.put(f"{base}/v1/txn", json=[
        {"KV": {"Verb": "set", "Key": "txn/c", "Value": b64("c")}},
        {"KV": {"Verb": "check-index", "Key": "txn/a", "Index": index}},
        {"KV": {"Verb": "check-not-exists", "Key": "txn/b"}},
        {"KV": {"Verb": "frobnicate", "Key": "txn/a"}},
    ])
    assert r.status_code == 409, (r.status_code, r.text)
    body = r.json()
    assert body["Results"] is None, body
    assert [e["OpIndex"] for e in body["Errors"]] == [1, 2, 3], body
    assert "failed index check" in body["Errors"][0]["What"], body
    assert c.kv.get("txn/c")[1] is None, "a failed transaction wrote something"
    # Locks: held, checked, refused to another session, released.
    s1 = c.session.create(lock_delay=0)
    s2 = c.session.create(lock_delay=0)
    r = c.txn.put([
        {"KV": {"Verb": "lock", "Key": "txn/l", "Value": b64("x"), "Session": s1}},
        {"KV": {"Verb": "check-session", "Key": "txn/l", "Session": s1}},
    ])
    held = r["Results"][0]["KV"]
    assert held["Session"] == s1 and held["LockIndex"] == 1, r
    assert c.kv.get("txn/l")[1]["Session"] == s1
    r = requests.put(f"{base}/v1/txn", json=[
        {"KV": {"Verb": "lock", "Key": "txn/l", "Value": b64("y"), "Session": s2}},
    ])
    assert r.status_code == 409 and "lock is already held" in r.text, r.text
    r = c.txn.put([{"KV": {"Verb": "unlock", "Key": "txn/l", "Value": b64("z"), "Session": s1}}])
    assert "Session" not in r["Results"][0]["KV"], r
    c.session.destroy(s1)
    c.session.destroy(s2)
    r = c.txn.put([{"KV": {"Verb": "delete-tree", "Key": "txn/"}}])
    assert r["Errors"] is None and r["Results"] == [], r
    assert c.kv.get("txn/", recurse=True)[1] is None
    r = requests.put(f"{base}/v1/txn", json=[{"KV": {"Verb": "get", "Key": "x"}}] * 129)
    assert r.status_code == 413 and "too many operations" in r.text, (r.status_code, r.text)
    r = requests.put(f"{base}/v1/txn", json=[{"Node": {"Verb": "get"}}])
    assert r.status_code == 400 and "not served" in r.text, (r.status_code, r.text)


print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
