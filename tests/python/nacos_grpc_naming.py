"""nacos-sdk-python 3.x naming over gRPC against berth: register an ephemeral instance,
subscribe and be told of a second one (registered through Consul's API by the test), list,
deregister. Usage: nacos_grpc_naming.py <nacos host:port> <consul host:port> <workdir>;
prints "registered" once the instance is in, waits for a line on stdin before shutting down
(the test checks the instance is gone with the connection), then prints "ok"."""

import asyncio
import json
import sys
import urllib.request

from v2.nacos import (
    ClientConfigBuilder,
    DeregisterInstanceParam,
    GRPCConfig,
    ListInstanceParam,
    ListServiceParam,
    NacosNamingService,
    RegisterInstanceParam,
    SubscribeServiceParam,
)

nacos, consul, work = sys.argv[1], sys.argv[2], sys.argv[3]


def consul_put(path, body):
    req = urllib.request.Request("http://%s%s" % (consul, path), data=json.dumps(body).encode(), method="PUT")
    urllib.request.urlopen(req, timeout=10).read()


async def main():
    cfg = (
        ClientConfigBuilder()
        .server_address(nacos)
        .log_dir(work + "/logs")
        .cache_dir(work + "/cache")
        .grpc_config(GRPCConfig(grpc_timeout=5000))
        .build()
    )
    naming = await NacosNamingService.create_naming_service(cfg)
    assert await naming.register_instance(
        RegisterInstanceParam(service_name="grpc-svc", ip="10.7.7.7", port=7070, weight=3.0,
                              metadata={"k": "v"}, ephemeral=True)
    )
    seen = []
    both = asyncio.Event()

    async def on_change(instances):
        seen.append(sorted((i.ip, i.port) for i in instances))
        if len(instances) == 2:
            both.set()

    await naming.subscribe(SubscribeServiceParam(service_name="grpc-svc", subscribe_callback=on_change))
    listed = await naming.list_instances(ListInstanceParam(service_name="grpc-svc", healthy_only=True))
    assert [(i.ip, i.port, i.weight, i.metadata) for i in listed] == [("10.7.7.7", 7070, 3.0, {"k": "v"})], listed
    # A second instance through Consul's API reaches the subscriber as a push.
    consul_put("/v1/agent/service/register", {"Name": "grpc-svc", "ID": "c1", "Address": "10.8.8.8", "Port": 8080})
    await asyncio.wait_for(both.wait(), 10)
    services = await naming.list_services(ListServiceParam(page_no=1, page_size=100))
    assert "grpc-svc" in services.services, services
    print("registered", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await naming.shutdown()
    print("ok", flush=True)


asyncio.run(main())
