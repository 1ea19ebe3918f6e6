//! The Nacos face's configuration API against real berth processes: curl-style calls of the
//! v1 open API (publish, get with its headers, compare-and-publish, history, delete, beta,
//! namespaces), the long-poll listener, nacos-sdk-python's v1 client (`tests/python/
//! nacos_v1_client.py`), bad input refused whole, and on 3 members a listener on a
//! follower told of a publish made at the leader and surviving the kill of a member.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{http_request, run, Cluster, Server, WITH_NACOS};

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A call to the Nacos API with `params` in the query: (status, body, headers).
fn nacos(
    addr: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, String, Vec<(String, String)>) {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    let path = format!("/nacos{path}?{}", query.join("&"));
    let ((code, body), h) = http_request(method, addr, &path, "", headers);
    (code, body, h)
}

/// `base` parameters followed by `extra` ones.
fn joined<'a>(
    base: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    base.iter().chain(extra).copied().collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn md5(s: &str) -> String {
    let (ok, out, err) = run(Command::new("python3").args([
        "-c",
        "import hashlib,sys;print(hashlib.md5(sys.argv[1].encode()).hexdigest())",
        s,
    ]));
    assert!(ok, "{err}");
    out.trim().to_string()
}

fn publish(addr: &str, data_id: &str, content: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut p = vec![
        ("dataId", data_id),
        ("group", "DEFAULT_GROUP"),
        ("content", content),
    ];
    p.extend_from_slice(extra);
    let (code, body, _) = nacos(addr, "POST", "/v1/cs/configs", &p, &[]);
    (code, body)
}

fn history_count(addr: &str, data_id: &str) -> u64 {
    let (code, body, _) = nacos(
        addr,
        "GET",
        "/v1/cs/history",
        &[
            ("search", "accurate"),
            ("dataId", data_id),
            ("group", "DEFAULT_GROUP"),
        ],
        &[],
    );
    assert_eq!(code, 200, "{body}");
    json(&body)["totalCount"].as_u64().expect("totalCount")
}

#[test]
fn open_api_publishes_reads_versions_and_refuses_bad_input() {
    let srv = Server::start_with(&[WITH_NACOS]);
    let a = srv.nacos_addr.as_str();

    let (code, body, _) = nacos(
        a,
        "GET",
        "/v1/cs/configs",
        &[("dataId", "app.yaml"), ("group", "DEFAULT_GROUP")],
        &[],
    );
    assert_eq!((code, body.as_str()), (404, "config data not exist"));

    assert_eq!(
        publish(
            a,
            "app.yaml",
            "port: 1\n",
            &[("type", "yaml"), ("desc", "the app")]
        ),
        (200, "true".into())
    );
    let (code, body, h) = nacos(
        a,
        "GET",
        "/v1/cs/configs",
        &[("dataId", "app.yaml"), ("group", "DEFAULT_GROUP")],
        &[],
    );
    assert_eq!((code, body.as_str()), (200, "port: 1\n"));
    assert_eq!(header(&h, "content-md5"), Some(md5("port: 1\n").as_str()));
    assert_eq!(header(&h, "config-type"), Some("yaml"));
    assert!(header(&h, "last-modified").is_some_and(|d| d.ends_with("GMT")));

    // Compare-and-publish: a stale MD5 is refused and changes nothing; the current one wins.
    let (code, body) = publish(a, "app.yaml", "port: 2\n", &[("casMd5", "0123")]);
    assert_eq!(code, 409, "{body}");
    let cas = md5("port: 1\n");
    let same = [("type", "yaml"), ("desc", "the app")];
    let (code, body) = publish(
        a,
        "app.yaml",
        "port: 2\n",
        &[same[0], same[1], ("casMd5", &cas)],
    );
    assert_eq!((code, body.as_str()), (200, "true"));
    // The same content again is no new version.
    assert_eq!(publish(a, "app.yaml", "port: 2\n", &same).0, 200);
    assert_eq!(history_count(a, "app.yaml"), 2);

    let (code, body, _) = nacos(
        a,
        "GET",
        "/v1/cs/history",
        &[
            ("search", "accurate"),
            ("dataId", "app.yaml"),
            ("group", "DEFAULT_GROUP"),
        ],
        &[],
    );
    assert_eq!(code, 200);
    let page = json(&body);
    let items = page["pageItems"].as_array().expect("items");
    assert_eq!(items[0]["content"], "port: 2\n");
    assert_eq!(items[0]["opType"], "U");
    assert_eq!(items[1]["opType"], "I");
    assert_eq!(items[1]["srcIp"], "127.0.0.1");
    let newest = items[0]["id"].as_u64().expect("id").to_string();
    let (code, body, _) = nacos(
        a,
        "GET",
        "/v1/cs/history/previous",
        &[
            ("id", &newest),
            ("dataId", "app.yaml"),
            ("group", "DEFAULT_GROUP"),
        ],
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["content"], "port: 1\n");

    // Bad input: each a 4xx with a message, and nothing written.
    let long = "x".repeat(100 * 1024 + 1);
    for (params, want, says) in [
        (vec![("group", "G"), ("content", "a")], 400, "dataId"),
        (vec![("dataId", "d"), ("content", "a")], 400, "group"),
        (
            vec![("dataId", "a b"), ("group", "G"), ("content", "a")],
            400,
            "' '",
        ),
        (
            vec![("dataId", "d"), ("group", "G"), ("content", "")],
            400,
            "content",
        ),
        (
            vec![
                ("dataId", "d"),
                ("group", "G"),
                ("content", "a"),
                ("type", "docx"),
            ],
            400,
            "docx",
        ),
        (
            vec![
                ("dataId", "d"),
                ("group", "G"),
                ("content", "a"),
                ("tenant", "nope"),
            ],
            400,
            "nope",
        ),
    ] {
        let (code, body, _) = nacos(a, "POST", "/v1/cs/configs", &params, &[]);
        assert_eq!(code, want, "{params:?}: {body}");
        assert!(body.contains(says), "{body} should name {says}");
    }
    // Oversize content, in a form body as clients send it.
    let form = format!("dataId=d&group=G&content={}", enc(&long));
    let ((code, body), _) = http_request(
        "POST",
        a,
        "/nacos/v1/cs/configs",
        &form,
        &[("Content-Type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(code, 413, "{}", &body[..body.len().min(200)]);
    assert!(body.contains("limit"), "{body}");
    let (code, body, _) = nacos(
        a,
        "GET",
        "/v1/cs/configs",
        &[("search", "accurate"), ("dataId", ""), ("group", "")],
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(json(&body)["totalCount"], 1, "only app.yaml exists: {body}");

    // Namespaces: created, used, listed, refused while not empty.
    let (code, body, _) = nacos(
        a,
        "POST",
        "/v1/console/namespaces",
        &[
            ("customNamespaceId", "dev"),
            ("namespaceName", "Development"),
        ],
        &[],
    );
    assert_eq!((code, body.as_str()), (200, "true"));
    assert_eq!(publish(a, "d", "v=1", &[("tenant", "dev")]).0, 200);
    let (_, body, _) = nacos(a, "GET", "/v1/console/namespaces", &[], &[]);
    let list = json(&body);
    let dev = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|n| n["namespace"] == "dev")
        .cloned()
        .expect("dev listed");
    assert_eq!(dev["configCount"], 1);
    let (code, _, _) = nacos(
        a,
        "DELETE",
        "/v1/console/namespaces",
        &[("namespaceId", "dev")],
        &[],
    );
    assert_eq!(code, 400);

    // Beta: only the listed client reads it, until it is stopped.
    let (code, body, _) = nacos(
        a,
        "POST",
        "/v1/cs/configs",
        &[
            ("dataId", "app.yaml"),
            ("group", "DEFAULT_GROUP"),
            ("content", "port: 3\n"),
        ],
        &[("betaIps", "10.9.9.9")],
    );
    assert_eq!(code, 200, "{body}");
    let read_as = |ip: &str| {
        nacos(
            a,
            "GET",
            "/v1/cs/configs",
            &[("dataId", "app.yaml"), ("group", "DEFAULT_GROUP")],
            &[("X-Forwarded-For", ip)],
        )
    };
    let (_, body, h) = read_as("10.9.9.9");
    assert_eq!(
        (body.as_str(), header(&h, "isbeta")),
        ("port: 3\n", Some("true"))
    );
    assert_eq!(read_as("10.1.1.1").1, "port: 2\n");
    let (code, _, _) = nacos(
        a,
        "DELETE",
        "/v1/cs/configs",
        &[
            ("dataId", "app.yaml"),
            ("group", "DEFAULT_GROUP"),
            ("beta", "true"),
        ],
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(read_as("10.9.9.9").1, "port: 2\n");

    // Delete keeps the deleted content as a version.
    let (code, body, _) = nacos(
        a,
        "DELETE",
        "/v1/cs/configs",
        &[("dataId", "app.yaml"), ("group", "DEFAULT_GROUP")],
        &[],
    );
    assert_eq!((code, body.as_str()), (200, "true"));
    assert_eq!(read_as("10.1.1.1").0, 404);
    assert_eq!(history_count(a, "app.yaml"), 3);
}

/// A long poll answers at once when the client's MD5 is stale, else holds until a publish.
#[test]
fn listener_answers_stale_md5_at_once_and_holds_for_a_change() {
    let srv = Server::start_with(&[WITH_NACOS]);
    let a = srv.nacos_addr.clone();
    assert_eq!(publish(&a, "l1", "x=1", &[]).0, 200);
    let probe = |md5: &str| format!("l1\u{2}DEFAULT_GROUP\u{2}{md5}\u{2}\u{1}");
    let listen = |probe: String, a: String| {
        let start = Instant::now();
        let (code, body, _) = nacos(
            &a,
            "POST",
            "/v1/cs/configs/listener",
            &[("Listening-Configs", &probe)],
            &[("Long-Pulling-Timeout", "30000")],
        );
        (code, body, start.elapsed())
    };
    let (code, body, took) = listen(probe(""), a.clone());
    assert_eq!((code, body.as_str()), (200, "l1%02DEFAULT_GROUP%01"));
    assert!(
        took < Duration::from_secs(2),
        "a stale probe waited {took:?}"
    );

    let current = probe(&md5("x=1"));
    let waiter = {
        let a = a.clone();
        std::thread::spawn(move || listen(current, a))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(publish(&a, "l1", "x=2", &[]).0, 200);
    let (code, body, took) = waiter.join().expect("listener");
    assert_eq!((code, body.as_str()), (200, "l1%02DEFAULT_GROUP%01"));
    assert!(
        took < Duration::from_secs(5),
        "the change reached the listener after {took:?}"
    );
}

fn python() -> String {
    crate::harness::python_with(
        "BERTH_TEST_PYTHON",
        "nacos",
        "pip install nacos-sdk-python==2.0.11",
    )
}

#[test]
fn nacos_sdk_python_v1_client_publishes_gets_and_watches() {
    let py = python();
    let srv = Server::start_with(&[WITH_NACOS]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/nacos_v1_client.py"
    );
    let (ok, out, err) = run(Command::new(py).arg(script).arg(&srv.nacos_addr));
    assert!(ok && out.trim_end().ends_with("ok"), "{out}\n{err}");
}

/// On 3 members: a listener held at a follower hears of a publish made at another member,
/// and after a member is killed, a listener re-syncing by MD5 still learns of the next one.
#[test]
fn listener_on_a_follower_hears_publishes_across_a_member_kill() {
    let mut cluster = Cluster::start_with(3, &[WITH_NACOS]);
    let leader = cluster.leader_by_metrics();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.nacos_addr.clone())
        .collect();
    let at = |i: usize| addrs[i].clone();
    assert_eq!(publish(&at(leader), "c", "v=1", &[]).0, 200);
    let wait_listen = |addr: String, md5: String| {
        std::thread::spawn(move || {
            let probe = format!("c\u{2}DEFAULT_GROUP\u{2}{md5}\u{2}\u{1}");
            nacos(
                &addr,
                "POST",
                "/v1/cs/configs/listener",
                &[("Listening-Configs", &probe)],
                &[("Long-Pulling-Timeout", "30000")],
            )
        })
    };
    let w = wait_listen(at(follower), md5("v=1"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(publish(&at(other), "c", "v=2", &[]).0, 200);
    let (code, body, _) = w.join().expect("listener");
    assert_eq!((code, body.as_str()), (200, "c%02DEFAULT_GROUP%01"));

    cluster.members[other].kill9();
    // The client re-syncs by MD5 at the follower: a publish it missed is answered at once.
    let publisher = leader;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if publish(&at(publisher), "c", "v=3", &[]).0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no publish after the kill");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body, _) = wait_listen(at(follower), md5("v=2"))
        .join()
        .expect("listener");
    assert_eq!((code, body.as_str()), (200, "c%02DEFAULT_GROUP%01"));
    let (_, body, _) = nacos(
        &at(follower),
        "GET",
        "/v1/cs/configs",
        &[("dataId", "c"), ("group", "DEFAULT_GROUP")],
        &[],
    );
    assert_eq!(body, "v=3");
}

fn python_nacos3() -> String {
    crate::harness::python_with(
        "BERTH_TEST_PYTHON_NACOS3",
        "v2.nacos",
        "pip install nacos-sdk-python==3.2.0 in a virtualenv",
    )
}

/// nacos-sdk-python 3.x speaks only Nacos 2.x gRPC (port + 1000): config get, publish, a
/// listener told of a change through a pushed notice, remove.
#[test]
fn nacos_sdk_python_grpc_client_publishes_gets_and_listens() {
    let py = python_nacos3();
    let srv = Server::start_with(&[WITH_NACOS]);
    let work = tempfile::tempdir().expect("tempdir");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/nacos_grpc_client.py"
    );
    let (ok, out, err) = run(Command::new(py)
        .arg(script)
        .arg(&srv.nacos_addr)
        .arg(work.path()));
    assert!(ok && out.trim_end().ends_with("ok"), "{out}\n{err}");
}

/// Bad gRPC input: an unknown payload type and a body that is not JSON are `ErrorResponse`s
/// with a message; a typed request berth does not serve says so in its typed response; a
/// publish with a stale casMd5 changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_bad_payloads_with_clear_errors() {
    use berth_proto::nacos::request_client::RequestClient;
    use berth_proto::nacos::{Any, Metadata, Payload};
    let srv = tokio::task::spawn_blocking(|| Server::start_with(&[WITH_NACOS]))
        .await
        .expect("start");
    let port: u16 = srv
        .nacos_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut c = RequestClient::connect(format!("http://127.0.0.1:{}", port + 1000))
        .await
        .expect("connect");
    let call = |kind: &str, body: &[u8]| Payload {
        metadata: Some(Metadata {
            r#type: kind.to_string(),
            client_ip: String::new(),
            headers: Default::default(),
        }),
        body: Some(Any {
            type_url: String::new(),
            value: body.to_vec(),
        }),
    };
    let answer = |p: Payload| {
        let kind = p.metadata.map(|m| m.r#type).unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_slice(&p.body.map(|b| b.value).unwrap_or_default()).expect("JSON");
        (kind, body)
    };
    let (kind, body) = answer(
        c.request(call("NoSuchRequest", b"{}"))
            .await
            .expect("call")
            .into_inner(),
    );
    assert_eq!(kind, "ErrorResponse");
    assert_eq!(
        (body["resultCode"].as_u64(), body["errorCode"].as_u64()),
        (Some(500), Some(400))
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("NoSuchRequest")),
        "{body}"
    );

    let (kind, body) = answer(
        c.request(call("ConfigQueryRequest", b"{\"dataId\": \"a"))
            .await
            .expect("call")
            .into_inner(),
    );
    assert_eq!(kind, "ErrorResponse");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("not JSON")),
        "{body}"
    );

    let publish = |content: &str, cas: &str| {
        serde_json::json!({"dataId": "x", "group": "G", "tenant": "", "content": content, "casMd5": cas,
            "additionMap": {"type": "text"}})
        .to_string()
    };
    let (kind, body) = answer(
        c.request(call("ConfigPublishRequest", publish("v1", "").as_bytes()))
            .await
            .expect("call")
            .into_inner(),
    );
    assert_eq!(
        (kind.as_str(), body["resultCode"].as_u64()),
        ("ConfigPublishResponse", Some(200))
    );
    let (_, body) = answer(
        c.request(call(
            "ConfigPublishRequest",
            publish("v2", "stale").as_bytes(),
        ))
        .await
        .expect("call")
        .into_inner(),
    );
    assert_eq!(
        (body["resultCode"].as_u64(), body["errorCode"].as_u64()),
        (Some(500), Some(409))
    );
    let (_, body) = answer(
        c.request(call(
            "ConfigQueryRequest",
            br#"{"dataId": "x", "group": "G", "tenant": ""}"#,
        ))
        .await
        .expect("call")
        .into_inner(),
    );
    assert_eq!(body["content"], "v1");
    let (_, body) = answer(
        c.request(call(
            "ConfigQueryRequest",
            br#"{"dataId": "bad id", "group": "G", "tenant": ""}"#,
        ))
        .await
        .expect("call")
        .into_inner(),
    );
    assert_eq!(body["errorCode"].as_u64(), Some(400), "{body}");

    // An ephemeral instance needs a set-up connection (its stream is what keeps it alive).
    let (kind, body) = answer(
        c.request(call(
            "InstanceRequest",
            br#"{"namespace": "public", "serviceName": "s", "groupName": "G", "type": "registerInstance",
                "instance": {"ip": "10.0.0.1", "port": 1, "ephemeral": true}}"#,
        ))
        .await
        .expect("call")
        .into_inner(),
    );
    assert_eq!(kind, "InstanceResponse");
    assert_eq!(body["errorCode"].as_u64(), Some(301), "{body}");
}

/// Naming through Nacos is the registry: an instance registered with Nacos's v1 API is a
/// passing Consul instance and a DNS answer; one registered through Consul is a Nacos
/// instance; a gRPC client's subscription is pushed a change made through Consul, and its
/// ephemeral instance goes when its connection does.
#[test]
fn nacos_naming_shares_the_registry_with_consul_and_dns() {
    let py3 = python_nacos3();
    let srv = Server::start_with(&[WITH_NACOS]);
    let a = srv.nacos_addr.as_str();
    let (code, body, _) = nacos(
        a,
        "POST",
        "/v1/ns/instance",
        &[
            ("serviceName", "web"),
            ("ip", "10.1.2.3"),
            ("port", "8080"),
            ("weight", "2"),
            ("metadata", r#"{"v":"1"}"#),
        ],
        &[],
    );
    assert_eq!((code, body.as_str()), (200, "ok"));
    let ((code, body), _) = http_request(
        "GET",
        &srv.http_addr,
        "/v1/health/service/web?passing",
        "",
        &[],
    );
    assert_eq!(code, 200);
    let entries = json(&body);
    assert_eq!(entries[0]["Service"]["Address"], "10.1.2.3");
    assert_eq!(entries[0]["Service"]["Meta"]["v"], "1");
    let (ok, out, err) = run(Command::new("dig").args([
        "+short",
        "-p",
        srv.dns_addr.rsplit(':').next().expect("port"),
        "@127.0.0.1",
        "web.service.consul",
        "SRV",
    ]));
    assert!(ok && out.contains(" 8080 "), "{out}{err}");

    let ((code, _), _) = http_request(
        "PUT",
        &srv.http_addr,
        "/v1/agent/service/register",
        r#"{"Name":"web","ID":"web-consul","Address":"10.5.5.5","Port":9090}"#,
        &[],
    );
    assert_eq!(code, 200);
    let (_, body, _) = nacos(
        a,
        "GET",
        "/v1/ns/instance/list",
        &[("serviceName", "web")],
        &[],
    );
    let hosts = json(&body)["hosts"].as_array().cloned().expect("hosts");
    let mut seen: Vec<(String, bool)> = hosts
        .iter()
        .map(|h| {
            (
                h["ip"].as_str().unwrap_or_default().to_string(),
                h["ephemeral"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("10.1.2.3".to_string(), true),
            ("10.5.5.5".to_string(), false)
        ]
    );

    // Bad input: each a 400 with the field named, nothing registered.
    for (params, says) in [
        (vec![("ip", "10.0.0.1"), ("port", "1")], "serviceName"),
        (vec![("serviceName", "x"), ("port", "1")], "ip"),
        (
            vec![("serviceName", "x"), ("ip", "10.0.0.1"), ("port", "0")],
            "port",
        ),
        (
            vec![
                ("serviceName", "x"),
                ("ip", "10.0.0.1"),
                ("port", "1"),
                ("weight", "-2"),
            ],
            "weight",
        ),
        (
            vec![
                ("serviceName", "x"),
                ("ip", "10.0.0.1"),
                ("port", "1"),
                ("metadata", "[1]"),
            ],
            "metadata",
        ),
    ] {
        let (code, body, _) = nacos(a, "POST", "/v1/ns/instance", &params, &[]);
        assert_eq!(code, 400, "{params:?}: {body}");
        assert!(body.contains(says), "{body} should name {says}");
    }
    let (_, body, _) = nacos(
        a,
        "GET",
        "/v1/ns/instance/list",
        &[("serviceName", "x")],
        &[],
    );
    assert_eq!(json(&body)["hosts"], serde_json::json!([]));

    let work = tempfile::tempdir().expect("tempdir");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/nacos_grpc_naming.py"
    );
    let mut child = Command::new(py3)
        .arg(script)
        .arg(a)
        .arg(&srv.http_addr)
        .arg(work.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("read");
    if line.trim() != "registered" {
        let out = child.wait_with_output().expect("python");
        panic!("{line}{}", String::from_utf8_lossy(&out.stderr));
    }
    let ips = |srv: &Server| {
        let ((_, body), _) = http_request(
            "GET",
            &srv.http_addr,
            "/v1/health/service/grpc-svc",
            "",
            &[],
        );
        let mut ips: Vec<String> = json(&body)
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["Service"]["Address"].as_str().map(str::to_string))
            .collect();
        ips.sort();
        ips
    };
    assert_eq!(ips(&srv), ["10.7.7.7", "10.8.8.8"]);
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"done\n").expect("write");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while ips(&srv) != ["10.8.8.8"] {
        assert!(
            Instant::now() < deadline,
            "the closed connection's instance stayed: {:?}",
            ips(&srv)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An ephemeral instance that stops beating turns unhealthy after 15 s and is removed after
/// 30 s (Nacos's timeouts), without a Raft write per beat.
#[test]
fn an_ephemeral_instance_without_beats_turns_unhealthy_then_goes() {
    let srv = Server::start_with(&[WITH_NACOS]);
    let a = srv.nacos_addr.as_str();
    let start = Instant::now();
    let (code, _, _) = nacos(
        a,
        "POST",
        "/v1/ns/instance",
        &[("serviceName", "quiet"), ("ip", "10.6.6.6"), ("port", "1")],
        &[],
    );
    assert_eq!(code, 200);
    let healthy = || {
        let (_, body, _) = nacos(
            a,
            "GET",
            "/v1/ns/instance/list",
            &[("serviceName", "quiet")],
            &[],
        );
        json(&body)["hosts"]
            .as_array()
            .and_then(|h| h.first())
            .map(|h| h["healthy"] == true)
    };
    assert_eq!(healthy(), Some(true));
    while healthy() == Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "still healthy after 25 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        start.elapsed() >= Duration::from_secs(14),
        "unhealthy after {:?}",
        start.elapsed()
    );
    while healthy().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "still there after 45 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        start.elapsed() >= Duration::from_secs(28),
        "removed after {:?}",
        start.elapsed()
    );
}

/// With berth's auth on, Nacos's login gives a berth user's token; calls without one are
/// refused, a user without a grant on the Config keyspace is refused, root may do anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_login_maps_onto_berth_users() {
    let srv =
        tokio::task::spawn_blocking(|| Server::start_with(&["--bcrypt-cost", "4", WITH_NACOS]))
            .await
            .expect("start");
    let mut plain = srv.client().await;
    crate::auth::setup(&mut plain).await;
    let a = srv.nacos_addr.clone();
    tokio::task::spawn_blocking(move || {
        let login = |user: &str, pw: &str| {
            nacos(
                &a,
                "POST",
                "/v1/auth/users/login",
                &[("username", user), ("password", pw)],
                &[],
            )
        };
        let (code, _, _) = login("root", "wrong");
        assert_eq!(code, 403);
        let (code, body, _) = login("root", "rootpw");
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        let root = v["accessToken"].as_str().expect("token").to_string();
        assert!(
            !root.is_empty() && v["tokenTtl"].as_u64().is_some() && v["globalAdmin"] == true,
            "{body}"
        );
        let (_, body, _) = login("alice", "apw");
        let alice = json(&body)["accessToken"]
            .as_str()
            .expect("token")
            .to_string();

        let put = |token: &str| {
            let mut p = vec![("dataId", "s"), ("group", "G"), ("content", "x")];
            if !token.is_empty() {
                p.push(("accessToken", token));
            }
            nacos(&a, "POST", "/v1/cs/configs", &p, &[]).0
        };
        assert_eq!(put(""), 401, "no token");
        assert_eq!(put(&alice), 403, "no grant on the Config keyspace");
        assert_eq!(put(&root), 200);
        let (code, body, _) = nacos(
            &a,
            "GET",
            "/v1/cs/configs",
            &[("dataId", "s"), ("group", "G")],
            &[("accessToken", root.as_str())],
        );
        assert_eq!((code, body.as_str()), (200, "x"));
        let (code, _, _) = nacos(
            &a,
            "POST",
            "/v1/ns/instance",
            &[("serviceName", "w"), ("ip", "10.0.0.1"), ("port", "1")],
            &[],
        );
        assert_eq!(code, 401, "naming needs a user too");
    })
    .await
    .expect("checks");
}

/// History keeps at most `--config-history-max-versions` versions per item, and none older
/// than `--config-history-max-age` but the current one.
#[test]
fn history_is_trimmed_by_count_and_by_age() {
    let srv = Server::start_with(&[
        WITH_NACOS,
        "--config-history-max-versions",
        "3",
        "--config-history-max-age",
        "3s",
    ]);
    let a = srv.nacos_addr.as_str();
    for v in 1..=5 {
        assert_eq!(publish(a, "h", &format!("v={v}"), &[]).0, 200);
    }
    assert_eq!(history_count(a, "h"), 3, "three versions kept");
    let start = Instant::now();
    while history_count(a, "h") > 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "old versions outlived their age"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (code, body, _) = nacos(
        a,
        "GET",
        "/v1/cs/history",
        &[
            ("search", "accurate"),
            ("dataId", "h"),
            ("group", "DEFAULT_GROUP"),
        ],
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        json(&body)["pageItems"][0]["content"],
        "v=5",
        "the current version stays"
    );
}

/// A raw Nacos gRPC connection: the unary client and the bi-stream, set up as clients do.
struct RawGrpc {
    unary: berth_proto::nacos::request_client::RequestClient<tonic::transport::Channel>,
    send: tokio::sync::mpsc::Sender<berth_proto::nacos::Payload>,
    pushes: tonic::Streaming<berth_proto::nacos::Payload>,
}

fn payload(kind: &str, body: serde_json::Value) -> berth_proto::nacos::Payload {
    use berth_proto::nacos::{Any, Metadata, Payload};
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_string(),
            client_ip: String::new(),
            headers: Default::default(),
        }),
        body: Some(Any {
            type_url: String::new(),
            value: body.to_string().into_bytes(),
        }),
    }
}

fn unpack(p: berth_proto::nacos::Payload) -> (String, serde_json::Value) {
    let kind = p.metadata.map(|m| m.r#type).unwrap_or_default();
    let body = serde_json::from_slice(&p.body.map(|b| b.value).unwrap_or_default()).expect("JSON");
    (kind, body)
}

impl RawGrpc {
    async fn open(grpc_port: u16) -> RawGrpc {
        use berth_proto::nacos::bi_request_stream_client::BiRequestStreamClient;
        use berth_proto::nacos::request_client::RequestClient;
        let channel =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))
                .expect("url")
                .connect()
                .await
                .expect("connect");
        let mut unary = RequestClient::new(channel.clone());
        let (kind, _) = unpack(
            unary
                .request(payload("ServerCheckRequest", serde_json::json!({})))
                .await
                .expect("server check")
                .into_inner(),
        );
        assert_eq!(kind, "ServerCheckResponse");
        let (send, rx) = tokio::sync::mpsc::channel(16);
        let pushes = BiRequestStreamClient::new(channel)
            .request_bi_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        send.send(payload(
            "ConnectionSetupRequest",
            serde_json::json!({"clientVersion": "berth-test", "tenant": "", "labels": {}}),
        ))
        .await
        .expect("setup");
        // The setup has no answer: a request that needs it shows when it has landed.
        let mut conn = RawGrpc {
            unary,
            send,
            pushes,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = conn.register("setup", "10.0.0.9", 9).await;
            if body["resultCode"] == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "never set up: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        conn
    }

    async fn register(
        &mut self,
        service: &str,
        ip: &str,
        port: u16,
    ) -> (String, serde_json::Value) {
        unpack(
            self.unary
                .request(payload(
                    "InstanceRequest",
                    serde_json::json!({"namespace": "public", "serviceName": service, "groupName": "DEFAULT_GROUP",
                        "type": "registerInstance", "instance": {"ip": ip, "port": port, "ephemeral": true}}),
                ))
                .await
                .expect("register")
                .into_inner(),
        )
    }

    /// The next push within `wait`: `Ok(None)` when the stream ended, `Err` with its status.
    async fn next_push(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(String, serde_json::Value)>, tonic::Status> {
        match tokio::time::timeout(wait, self.pushes.message()).await {
            Ok(r) => r.map(|p| p.map(unpack)),
            Err(_) => panic!("no push within {wait:?}"),
        }
    }
}

/// Nacos's connection liveness: a silent client is asked whether it is alive
/// (`ClientDetectionRequest`); one that answers keeps its connection and its ephemeral
/// instance, one that does not loses both. A member that shuts down tells its clients to
/// reconnect elsewhere (`ConnectResetRequest`) before the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_grpc_clients_are_probed_and_dropped_and_shutdown_resets_connections() {
    let mut srv = tokio::task::spawn_blocking(|| {
        Server::start_with(&[WITH_NACOS, "--nacos-idle-timeout", "1s"])
    })
    .await
    .expect("start");
    let addr = srv.nacos_addr.clone();
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let listed = |addr: String| async move {
        tokio::task::spawn_blocking(move || {
            let (code, body, _) = nacos(
                &addr,
                "GET",
                "/v1/ns/instance/list",
                &[("serviceName", "detect")],
                &[],
            );
            assert_eq!(code, 200, "{body}");
            json(&body)["hosts"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .filter_map(|i| i["ip"].as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .await
        .expect("list")
    };

    // The client that answers every probe, until its stream ends: it reports how many
    // probes it answered and whether it was told to reset before the end.
    let mut alive = RawGrpc::open(port + 1000).await;
    assert_eq!(
        alive.register("detect", "10.0.0.1", 1).await.1["resultCode"],
        200
    );
    let answering = tokio::spawn(async move {
        let (mut probes, mut reset) = (0, false);
        loop {
            match alive.pushes.message().await {
                Ok(Some(p)) => {
                    let (kind, body) = unpack(p);
                    match kind.as_str() {
                        "ClientDetectionRequest" => probes += 1,
                        "ConnectResetRequest" => reset = true,
                        _ => {}
                    }
                    let _ = alive
                        .send
                        .send(payload(
                            &kind.replace("Request", "Response"),
                            serde_json::json!({"resultCode": 200, "errorCode": 0, "requestId": body["requestId"]}),
                        ))
                        .await;
                }
                end => return (probes, reset, format!("{end:?}")),
            }
        }
    });
    // The silent one.
    let mut silent = RawGrpc::open(port + 1000).await;
    assert_eq!(
        silent.register("detect", "10.0.0.2", 2).await.1["resultCode"],
        200
    );
    let mut ips = listed(addr.clone()).await;
    ips.sort();
    assert_eq!(ips, ["10.0.0.1", "10.0.0.2"]);

    // Within the idle time plus a sweep, it is asked, never answers, and its stream ends
    // with a status that says why.
    let (kind, probe) = silent
        .next_push(Duration::from_secs(5))
        .await
        .expect("push")
        .expect("a probe");
    assert_eq!(kind, "ClientDetectionRequest", "{probe}");
    let ended = loop {
        match silent.next_push(Duration::from_secs(5)).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err("an error status");
    assert!(
        status.message().contains("ClientDetectionRequest"),
        "{status:?}"
    );
    // Its instance goes; the answering client's stays through three more idle periods.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ips = listed(addr.clone()).await;
        if ips == ["10.0.0.1"] {
            break;
        }
        assert!(Instant::now() < deadline, "instances: {ips:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(listed(addr.clone()).await, ["10.0.0.1"]);
    assert!(
        !answering.is_finished(),
        "the answering client's stream ended"
    );

    // A member that stops resets its connections first.
    let stopping = std::thread::spawn(move || srv.stop());
    let (probes, reset, end) = tokio::time::timeout(Duration::from_secs(15), answering)
        .await
        .expect("the stream ends")
        .expect("answering");
    assert!(probes >= 2, "the answering client was asked {probes} times");
    assert!(
        reset,
        "no ConnectResetRequest before the stream ended ({end})"
    );
    stopping.join().expect("stop");
}

/// `/nacos/v1/ns/service`: a service defined before its instances, with a protect threshold
/// that, once reached, shows clients every instance (as Nacos does), changed and removed
/// with Nacos's refusals for what cannot be done.
#[test]
fn services_are_defined_with_a_protect_threshold() {
    let srv = Server::start_with(&[WITH_NACOS]);
    let a = srv.nacos_addr.as_str();
    let call = |method: &str, path: &str, params: &[(&str, &str)]| {
        let (code, body, _) = nacos(a, method, path, params, &[]);
        (code, body)
    };
    let svc = [("serviceName", "prot"), ("groupName", "G")];
    let with = |extra: &[(&'static str, &'static str)]| joined(&svc, extra);

    assert_eq!(
        call(
            "POST",
            "/v1/ns/service",
            &with(&[("protectThreshold", "0.6"), ("metadata", "team=a,tier=1")])
        ),
        (200, "ok".into())
    );
    let (code, body) = call("POST", "/v1/ns/service", &svc);
    assert!(
        code == 400 && body.contains("already exists"),
        "{code} {body}"
    );
    let (code, body) = call("GET", "/v1/ns/service", &svc);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["protectThreshold"], 0.6);
    assert_eq!(v["metadata"], serde_json::json!({"team": "a", "tier": "1"}));
    assert_eq!(
        (v["name"].as_str(), v["groupName"].as_str()),
        (Some("prot"), Some("G"))
    );
    // Listed before it has instances.
    let (_, body) = call("GET", "/v1/ns/service/list", &[("groupName", "G")]);
    assert_eq!(json(&body)["doms"], serde_json::json!(["prot"]));

    // Bad input is refused whole.
    for (params, want) in [
        (with(&[("protectThreshold", "1.5")]), 400),
        (with(&[("protectThreshold", "x")]), 400),
        (
            with(&[("selector", r#"{"type":"label","expression":"a=b"}"#)]),
            400,
        ),
        (with(&[("metadata", "not pairs")]), 400),
        (vec![("serviceName", "nowhere"), ("groupName", "G")], 404),
    ] {
        let (code, body) = call("PUT", "/v1/ns/service", &params);
        assert_eq!(code, want, "{params:?}: {body}");
    }

    // One healthy and one unhealthy instance: a share of 0.5, at or below 0.6.
    for (ip, healthy) in [("10.0.0.1", "true"), ("10.0.0.2", "false")] {
        let (code, body) = call(
            "POST",
            "/v1/ns/instance",
            &with(&[("ip", ip), ("port", "80"), ("healthy", healthy)]),
        );
        assert_eq!((code, body.as_str()), (200, "ok"));
    }
    let listed = |healthy_only: &'static str| {
        let (code, body) = call(
            "GET",
            "/v1/ns/instance/list",
            &with(&[("healthyOnly", healthy_only)]),
        );
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        let mut hosts: Vec<(String, bool)> = v["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|h| {
                (
                    h["ip"].as_str().unwrap_or("").to_string(),
                    h["healthy"] == true,
                )
            })
            .collect();
        hosts.sort();
        (hosts, v["reachProtectionThreshold"] == true)
    };
    assert_eq!(
        listed("true"),
        (
            vec![("10.0.0.1".into(), true), ("10.0.0.2".into(), true)],
            true
        )
    );
    // Lowered below the share: healthy only means healthy only again. Metadata stays.
    assert_eq!(
        call(
            "PUT",
            "/v1/ns/service",
            &with(&[("protectThreshold", "0.4")])
        ),
        (200, "ok".into())
    );
    assert_eq!(listed("true"), (vec![("10.0.0.1".into(), true)], false));
    assert_eq!(
        listed("false"),
        (
            vec![("10.0.0.1".into(), true), ("10.0.0.2".into(), false)],
            false
        )
    );
    let (_, body) = call("GET", "/v1/ns/service", &svc);
    assert_eq!(json(&body)["metadata"]["team"], "a");
    assert_eq!(json(&body)["clusters"][0]["name"], "DEFAULT");

    // Not removed while it has instances; removed once it has none.
    let (code, body) = call("DELETE", "/v1/ns/service", &svc);
    assert!(code == 400 && body.contains("instances"), "{code} {body}");
    for ip in ["10.0.0.1", "10.0.0.2"] {
        assert_eq!(
            call(
                "DELETE",
                "/v1/ns/instance",
                &with(&[("ip", ip), ("port", "80")])
            )
            .0,
            200
        );
    }
    assert_eq!(call("DELETE", "/v1/ns/service", &svc), (200, "ok".into()));
    assert_eq!(call("GET", "/v1/ns/service", &svc).0, 404);
    assert_eq!(call("DELETE", "/v1/ns/service", &svc).0, 404);
}

/// A Nacos instance registered or updated with `enabled=false` takes no traffic through any
/// face: Consul sees it in maintenance (not passing, not in DNS); enabling it again ends that.
#[test]
fn a_disabled_nacos_instance_is_in_maintenance_for_consul() {
    let srv = Server::start_with(&[WITH_NACOS]);
    let a = srv.nacos_addr.as_str();
    let inst = [("serviceName", "dis"), ("ip", "10.0.0.7"), ("port", "81")];
    let with = |extra: &[(&'static str, &'static str)]| joined(&inst, extra);
    let (code, body, _) = nacos(
        a,
        "POST",
        "/v1/ns/instance",
        &with(&[("enabled", "false")]),
        &[],
    );
    assert_eq!((code, body.as_str()), (200, "ok"));
    let consul = |path: &str| {
        let ((code, body), _) = http_request("GET", &srv.http_addr, path, "", &[]);
        assert_eq!(code, 200, "{body}");
        json(&body)
    };
    assert_eq!(
        consul("/v1/health/service/dis?passing"),
        serde_json::json!([])
    );
    let all = consul("/v1/health/service/dis");
    let checks: Vec<&str> = all[0]["Checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["CheckID"].as_str())
        .collect();
    assert!(
        checks
            .iter()
            .any(|c| c.starts_with("_service_maintenance:")),
        "{checks:?}"
    );
    // Nacos shows it disabled but healthy (its heartbeat check passes), and its instance
    // list leaves it out, as Nacos's does.
    let (code, body, _) = nacos(a, "GET", "/v1/ns/instance", &inst, &[]);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(
        (v["enabled"].as_bool(), v["healthy"].as_bool()),
        (Some(false), Some(true))
    );
    let (_, body, _) = nacos(
        a,
        "GET",
        "/v1/ns/instance/list",
        &[("serviceName", "dis")],
        &[],
    );
    assert_eq!(json(&body)["hosts"], serde_json::json!([]));

    let (code, body, _) = nacos(
        a,
        "PUT",
        "/v1/ns/instance",
        &with(&[("enabled", "true")]),
        &[],
    );
    assert_eq!((code, body.as_str()), (200, "ok"));
    let passing = consul("/v1/health/service/dis?passing");
    assert_eq!(passing[0]["Service"]["Address"], "10.0.0.7", "{passing}");
    let (_, body, _) = nacos(
        a,
        "GET",
        "/v1/ns/instance/list",
        &[("serviceName", "dis")],
        &[],
    );
    assert_eq!(json(&body)["hosts"][0]["enabled"], true);
}
