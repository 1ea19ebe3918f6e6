"""nacos-sdk-python 3.x (Nacos 2.x gRPC, `v2.nacos`) against berth's Nacos face: config
publish, get, a beta seen only by the client whose connection declares its label, a
listener told of a change, remove. Usage: nacos_grpc_client.py <host:port> <workdir>;
prints "ok" when every step passed."""

import asyncio
import sys
import urllib.parse
import urllib.request

from v2.nacos import ClientConfigBuilder, ConfigParam, GRPCConfig, NacosConfigService

addr, work = sys.argv[1], sys.argv[2]


def client_config(name, labels=None):
    b = (
        ClientConfigBuilder()
        .server_address(addr)
        .namespace_id("")
        .log_dir(work + "/logs-" + name)
        .cache_dir(work + "/cache-" + name)
        .grpc_config(GRPCConfig(grpc_timeout=5000))
    )
    if labels:
        b = b.app_conn_labels(labels)
    return b.build()


async def main():
    config = await NacosConfigService.create_config_service(client_config("plain"))
    missing = await config.get_config(ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP"))
    assert missing == "", repr(missing)
    assert await config.publish_config(
        ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP", content="a: 1", type="yaml")
    )
    got = await config.get_config(ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP"))
    assert got == "a: 1", repr(got)

    # A beta for clients labelled env=canary (berth's betaLabels, over the open API): the
    # labelled client reads it, the plain one the published content. Then it is withdrawn.
    form = urllib.parse.urlencode(
        {"dataId": "g.yaml", "group": "DEFAULT_GROUP", "content": "a: beta", "betaLabels": "env=canary"}
    ).encode()
    with urllib.request.urlopen("http://" + addr + "/nacos/v1/cs/configs", data=form) as r:
        assert r.status == 200, r.status
    canary = await NacosConfigService.create_config_service(
        client_config("canary", {"env": "canary"})
    )
    got = await canary.get_config(ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP"))
    assert got == "a: beta", repr(got)
    got = await config.get_config(ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP"))
    assert got == "a: 1", repr(got)
    await canary.shutdown()
    req = urllib.request.Request(
        "http://" + addr + "/nacos/v1/cs/configs?dataId=g.yaml&group=DEFAULT_GROUP&beta=true",
        method="DELETE",
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 200, r.status

    changed = asyncio.Event()
    seen = []

    async def on_change(tenant, group, data_id, content):
        seen.append(content)
        if content == "a: 2":
            changed.set()

    await config.add_listener("g.yaml", "DEFAULT_GROUP", on_change)
    # The listen loop sends its first batch listen within 5 s.
    await asyncio.sleep(6)
    assert await config.publish_config(
        ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP", content="a: 2", type="yaml")
    )
    await asyncio.wait_for(changed.wait(), 10)

    assert await config.remove_config(ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP"))
    gone = await config.get_config(ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP"))
    assert gone == "", repr(gone)
    await config.shutdown()
    print("ok")


asyncio.run(main())
