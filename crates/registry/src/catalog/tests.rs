//! The catalog view: indexes move for the topics a change alters and only for those.

use std::time::Duration;

use super::*;
use crate::layout;
use crate::model::{Check, CheckKind, CheckStatus, Node, Service};

fn put<T: serde::Serialize>(c: &mut Catalog, key: Vec<u8>, v: &T, rev: i64) -> Vec<Topic> {
    let value = serde_json::to_vec(v).expect("encode");
    c.apply(Change::Put {
        key: &key,
        value: &value,
        create: rev,
        modify: rev,
    })
    .expect("apply")
}

fn service(node: &str, id: &str, name: &str, tags: &[&str]) -> Service {
    Service {
        id: id.into(),
        name: name.into(),
        node: node.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Service::default()
    }
}

#[test]
fn a_change_moves_its_own_topics_only() {
    let mut c = Catalog::new();
    let node = Node {
        name: "n1".into(),
        ..Node::default()
    };
    put(&mut c, layout::node("n1"), &node, 2);
    put(
        &mut c,
        layout::service("n1", "web1"),
        &service("n1", "web1", "web", &["a"]),
        3,
    );
    put(
        &mut c,
        layout::service("n1", "db1"),
        &service("n1", "db1", "db", &[]),
        4,
    );
    assert_eq!(c.index(&Topic::Service("web".into())), 3);
    assert_eq!(c.index(&Topic::Service("db".into())), 4);
    assert_eq!(c.index(&Topic::ServiceList), 4);
    assert_eq!(c.index(&Topic::Service("nothing".into())), 1, "never 0");
    // Re-registering web1 with the same tags moves web only, not the name list.
    let topics = put(
        &mut c,
        layout::service("n1", "web1"),
        &service("n1", "web1", "web", &["a"]),
        5,
    );
    assert!(topics.contains(&Topic::Service("web".into())));
    assert!(!topics.contains(&Topic::ServiceList));
    assert_eq!(c.index(&Topic::Service("db".into())), 4);
    // A new tag changes the list.
    let topics = put(
        &mut c,
        layout::service("n1", "web1"),
        &service("n1", "web1", "web", &["a", "b"]),
        6,
    );
    assert!(topics.contains(&Topic::ServiceList));
    let names = c.service_names();
    assert_eq!(names["web"].len(), 2);
    // A deletion moves the index too.
    let key = layout::service("n1", "db1");
    c.apply(Change::Delete {
        key: &key,
        revision: 7,
    })
    .expect("apply");
    assert_eq!(c.index(&Topic::Service("db".into())), 7);
    assert!(c.entries("db").is_empty());
    assert_eq!(c.index(&Topic::Service("web".into())), 6);
}

#[test]
fn a_ttl_check_is_critical_unless_its_lease_key_lives() {
    let mut c = Catalog::new();
    put(
        &mut c,
        layout::service("n1", "web1"),
        &service("n1", "web1", "web", &[]),
        2,
    );
    let check = Check {
        id: "service:web1".into(),
        name: "ttl".into(),
        node: "n1".into(),
        service_id: "web1".into(),
        service_name: "web".into(),
        status: CheckStatus::Passing,
        kind: CheckKind::Ttl {
            ttl: Duration::from_secs(5),
        },
        ..Check::default()
    };
    put(
        &mut c,
        layout::check("n1", "web1", "service:web1"),
        &check,
        3,
    );
    assert_eq!(c.entries("web")[0].status(), CheckStatus::Critical);
    let ttl = layout::ttl("n1", "web1", "service:web1");
    c.apply(Change::Put {
        key: &ttl,
        value: b"",
        create: 4,
        modify: 4,
    })
    .expect("apply");
    assert_eq!(c.entries("web")[0].status(), CheckStatus::Passing);
    assert_eq!(c.index(&Topic::Service("web".into())), 4);
    assert_eq!(
        c.check("n1", "service:web1").map(|r| r.value.status),
        Some(CheckStatus::Passing)
    );
    // The lease expired: the key is deleted and the check turns critical at that revision.
    c.apply(Change::Delete {
        key: &ttl,
        revision: 9,
    })
    .expect("apply");
    let e = &c.entries("web")[0];
    assert_eq!(e.status(), CheckStatus::Critical);
    assert_eq!(e.checks[0].value.output, "TTL expired");
    assert_eq!(c.index(&Topic::Service("web".into())), 9);
    assert_eq!(c.checks_in(Some(CheckStatus::Critical)).len(), 1);
}

#[test]
fn a_damaged_record_is_an_error_naming_its_key() {
    let mut c = Catalog::new();
    let key = layout::service("n1", "x");
    let err = c
        .apply(Change::Put {
            key: &key,
            value: b"{not json",
            create: 2,
            modify: 2,
        })
        .expect_err("refused");
    assert!(err.to_string().contains("svc/n1/x"), "{err}");
}

#[test]
fn the_service_list_moves_only_when_a_tag_union_changes() {
    let mut c = Catalog::new();
    put(
        &mut c,
        layout::service("n1", "a1"),
        &service("n1", "a1", "api", &["x", "y"]),
        2,
    );
    put(
        &mut c,
        layout::service("n1", "a2"),
        &service("n1", "a2", "api", &["x"]),
        3,
    );
    assert_eq!(c.index(&Topic::ServiceList), 2, "a2 adds no new tag");
    // a1 drops x, which a2 still has: no change; then drops y, which nobody else has.
    let t = put(
        &mut c,
        layout::service("n1", "a1"),
        &service("n1", "a1", "api", &["y"]),
        4,
    );
    assert!(!t.contains(&Topic::ServiceList));
    let t = put(
        &mut c,
        layout::service("n1", "a1"),
        &service("n1", "a1", "api", &[]),
        5,
    );
    assert!(t.contains(&Topic::ServiceList));
    assert_eq!(c.service_names()["api"].iter().collect::<Vec<_>>(), ["x"]);
    // Renaming an instance moves it between names.
    let t = put(
        &mut c,
        layout::service("n1", "a2"),
        &service("n1", "a2", "web", &["x"]),
        6,
    );
    assert!(t.contains(&Topic::ServiceList));
    assert!(c.service_names()["api"].is_empty());
    assert_eq!(c.service_names()["web"].len(), 1);
}

#[test]
fn reaper_and_runners_see_only_the_checks_they_act_on() {
    let mut c = Catalog::new();
    let http = |id: &str, status: CheckStatus, after: u64| Check {
        id: id.into(),
        node: "n1".into(),
        service_id: "web1".into(),
        service_name: "web".into(),
        status,
        deregister_critical_after: Duration::from_secs(after),
        kind: CheckKind::Http {
            url: "http://x/".into(),
            method: "GET".into(),
            headers: Default::default(),
            body: String::new(),
            tls_skip_verify: false,
            tls_server_name: String::new(),
        },
        ..Check::default()
    };
    let key = |id: &str| layout::check("n1", "web1", id);
    put(&mut c, key("a"), &http("a", CheckStatus::Critical, 60), 2);
    put(&mut c, key("b"), &http("b", CheckStatus::Critical, 0), 3);
    put(&mut c, key("c"), &http("c", CheckStatus::Passing, 60), 4);
    let ids = |c: &Catalog| -> Vec<String> {
        c.critical_reapable()
            .into_iter()
            .map(|r| r.value.id)
            .collect()
    };
    assert_eq!(ids(&c), ["a"]);
    assert_eq!(c.active_checks().len(), 3, "HTTP checks are run by berth");
    // c turns critical; a loses its timeout; then c goes away.
    put(&mut c, key("c"), &http("c", CheckStatus::Critical, 60), 5);
    put(&mut c, key("a"), &http("a", CheckStatus::Critical, 0), 6);
    assert_eq!(ids(&c), ["c"]);
    c.apply(Change::Delete {
        key: &key("c"),
        revision: 7,
    })
    .expect("apply");
    assert!(ids(&c).is_empty());
    assert_eq!(c.active_checks().len(), 2);
    // A check that becomes a TTL check is no longer run.
    let ttl = Check {
        kind: CheckKind::Ttl {
            ttl: Duration::from_secs(5),
        },
        ..http("b", CheckStatus::Critical, 0)
    };
    put(&mut c, key("b"), &ttl, 8);
    assert_eq!(c.active_checks().len(), 1);
}
