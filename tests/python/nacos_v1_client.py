"""nacos-sdk-python 2.0.x's HTTP v1 client (`nacos.NacosClient`) against berth's Nacos face:
publish, get, a watcher told of a change, search, remove, and a refused namespace.
Usage: nacos_v1_client.py <host:port>; prints "ok" when every step passed."""

import sys
import tempfile
import threading
import time

import nacos

addr = sys.argv[1]
tmp = tempfile.mkdtemp()


def client(namespace=""):
    c = nacos.NacosClient(addr, namespace=namespace, logDir=tmp)
    c.set_options(no_snapshot=True, snapshot_base=tmp, failover_base=tmp, pulling_timeout=5)
    return c


c = client()
assert c.publish_config("app.properties", "DEFAULT_GROUP", "a=1", config_type="properties")
got = c.get_config("app.properties", "DEFAULT_GROUP")
assert got == "a=1", got

seen = []
changed = threading.Event()


def on_change(args):
    seen.append(args["content"])
    if args["content"] == "a=2":
        changed.set()


c.add_config_watcher("app.properties", "DEFAULT_GROUP", on_change)
# Let the puller send its first long poll (it sleeps 1 s before each).
time.sleep(2)
assert c.publish_config("app.properties", "DEFAULT_GROUP", "a=2")
assert changed.wait(10), "the watcher was not told of the change: %r" % seen
c.remove_config_watcher("app.properties", "DEFAULT_GROUP", on_change, remove_all=True)

page = c.get_configs(group="DEFAULT_GROUP")
assert any(i["dataId"] == "app.properties" and i["content"] == "a=2" for i in page["pageItems"]), page

assert c.remove_config("app.properties", "DEFAULT_GROUP")
assert c.get_config("app.properties", "DEFAULT_GROUP") is None

try:
    client("no-such-namespace").publish_config("x", "DEFAULT_GROUP", "1")
    raise AssertionError("a publish to an unknown namespace was accepted")
except nacos.NacosException as e:
    assert "400" in str(e), e

# Naming: an ephemeral instance with the client's own beats, listed, beaten, removed.
assert c.add_naming_instance("py-svc", "10.3.3.3", 8080, weight=2.0, metadata={"zone": "a"})
hosts = c.list_naming_instance("py-svc")["hosts"]
assert [(h["ip"], h["port"], h["weight"], h["metadata"]) for h in hosts] == [
    ("10.3.3.3", 8080, 2.0, {"zone": "a"})
], hosts
assert hosts[0]["instanceId"].startswith("10.3.3.3#8080#"), hosts
beat = c.send_heartbeat("py-svc", "10.3.3.3", 8080)
assert beat["code"] == 10200, beat
# A full beat of an unknown instance registers it, as Nacos does.
assert c.send_heartbeat("py-svc", "10.4.4.4", 1)["code"] == 10200
assert len(c.list_naming_instance("py-svc")["hosts"]) == 2
assert c.remove_naming_instance("py-svc", "10.3.3.3", 8080)
assert c.remove_naming_instance("py-svc", "10.4.4.4", 1)
assert c.list_naming_instance("py-svc")["hosts"] == []

print("ok")
sys.stdout.flush()
