"""nacos-sdk-python 3.x (Nacos 2.x gRPC, `v2.nacos`) against berth's Nacos face: config
publish, get, a listener told of a change, remove. Usage: nacos_grpc_client.py <host:port>
<workdir>; prints "ok" when every step passed."""

import asyncio
import sys

from v2.nacos import ClientConfigBuilder, ConfigParam, GRPCConfig, NacosConfigService

addr, work = sys.argv[1], sys.argv[2]


async def main():
    cfg = (
        ClientConfigBuilder()
        .server_address(addr)
        .namespace_id("")
        .log_dir(work + "/logs")
        .cache_dir(work + "/cache")
        .grpc_config(GRPCConfig(grpc_timeout=5000))
        .build()
    )
    config = await NacosConfigService.create_config_service(cfg)
    missing = await config.get_config(ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP"))
    assert missing == "", repr(missing)
    assert await config.publish_config(
        ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP", content="a: 1", type="yaml")
    )
    got = await config.get_config(ConfigParam(data_id="g.yaml", group="DEFAULT_GROUP"))
    assert got == "a: 1", repr(got)

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
