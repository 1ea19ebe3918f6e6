#!/usr/bin/env python3
"""Reload-under-load helpers for bench/gateway-reload.sh (standard library only).

  upstream PORT                  a WebSocket-ish echo upstream: answers an upgrade with 101,
                                 then sends every byte back (the gateway only splices bytes)
  hold GATEWAY N SECS CHURN...   opens N upgraded connections through GATEWAY (host:port),
                                 echoes a message on each every second for SECS while CHURN
                                 runs, then reports JSON: opened, closed, failed echoes, and
                                 the churn's counts
  CHURN is `berth ADMIN RATE UPSTREAM_A UPSTREAM_B` (RATE route/upstream writes per second
  through APISIX's Admin API, alternating the route's upstream between two nodes), `nginx
  CONF RATE` (`nginx -s reload` RATE times per second) or `none`.
"""
import asyncio, json, subprocess, sys, time

async def upstream(port):
    async def serve(r, w):
        head = await r.readuntil(b"\r\n\r\n")
        if b"upgrade" not in head.lower():
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); await w.drain(); w.close(); return
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await w.drain()
        try:
            while data := await r.read(4096):
                w.write(data); await w.drain()
        except ConnectionError:
            pass
        w.close()
    srv = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with srv:
        await srv.serve_forever()

async def holder(gw, i, stats, stop):
    host, port = gw.split(":")
    try:
        r, w = await asyncio.open_connection(host, int(port))
        w.write(f"GET /ws HTTP/1.1\r\nHost: {gw}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 101"):
            stats["refused"] += 1; return
    except Exception:
        stats["refused"] += 1; return
    stats["opened"] += 1
    n = 0
    while not stop.is_set():
        msg = f"{i}:{n}\n".encode(); n += 1
        try:
            w.write(msg); await w.drain()
            back = await asyncio.wait_for(r.readexactly(len(msg)), 5)
            if back != msg:
                stats["bad_echo"] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            stats["closed"] += 1; return
        except asyncio.TimeoutError:
            stats["timeouts"] += 1
        await asyncio.sleep(1)
    w.close()

def admin_put(conn, path, body):
    conn.request("PUT", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse(); resp.read()
    return resp.status

async def churn_berth(admin, rate, a, b, stats, stop):
    import http.client
    conn = http.client.HTTPConnection(admin)
    i = 0; start = time.monotonic()
    while not stop.is_set():
        node = a if i % 2 == 0 else b
        try:
            if i % 2 == 0:
                st = await asyncio.to_thread(admin_put, conn, "/apisix/admin/upstreams/ws", {"nodes": {node: 1}})
            else:
                st = await asyncio.to_thread(admin_put, conn, "/apisix/admin/routes/ws",
                    {"uri": "/ws", "upstream_id": "ws", "enable_websocket": True, "name": f"v{i}"})
            stats["changes"] += 1
            if st not in (200, 201): stats["change_errors"] += 1
        except Exception:
            stats["change_errors"] += 1; conn = http.client.HTTPConnection(admin)
        i += 1
        await asyncio.sleep(max(0, start + i / rate - time.monotonic()))

async def churn_nginx(prefix, conf, rate, stats, stop):
    i = 0; start = time.monotonic()
    while not stop.is_set():
        p = await asyncio.create_subprocess_exec("nginx", "-p", prefix, "-c", conf, "-s", "reload",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stats["changes"] += 1
        if await p.wait() != 0: stats["change_errors"] += 1
        i += 1
        await asyncio.sleep(max(0, start + i / rate - time.monotonic()))

async def hold(gw, n, secs, churn):
    stats = dict(opened=0, refused=0, closed=0, bad_echo=0, timeouts=0, changes=0, change_errors=0)
    stop = asyncio.Event()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(holder(gw, i, stats, stop)))
        if i % 100 == 99: await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    if churn[0] == "berth":
        tasks.append(asyncio.create_task(churn_berth(churn[1], float(churn[2]), churn[3], churn[4], stats, stop)))
    elif churn[0] == "nginx":
        tasks.append(asyncio.create_task(churn_nginx(churn[1], churn[2], float(churn[3]), stats, stop)))
    await asyncio.sleep(secs)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(stats))

if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        asyncio.run(upstream(int(sys.argv[2])))
    else:
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run(hold(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]))
