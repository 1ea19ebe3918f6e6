//! The routing table: every enabled route compiled into per-host buckets, each with a hash
//! of exact paths and an ordered list of the other patterns, so a request is matched without
//! scanning routes of other hosts or comparing against exact paths one by one.
//!
//! The order is total and stated:
//! 1. host: an exact host, then `*.suffix` hosts (longest suffix first), then routes with no
//!    host (a route without hosts takes its service's);
//! 2. path: exact, then `:param` patterns, then prefixes; longer literal text first;
//! 3. the higher `priority`;
//! 4. the smaller route ID.
//!
//! The first candidate in that order whose methods, client address and `vars` all hold is
//! the match. A table is immutable: a change builds a new one.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{HostPattern, PathPattern, PluginSet, Route, Service, Timeout};
use crate::plugins::Plugins;
use crate::vars::Vars;

/// What the table reads of a request.
pub trait Request: Vars {
    /// The host, lower case, without a port.
    fn host(&self) -> &str;
    /// The path (without the query).
    fn path(&self) -> &str;
    /// The method.
    fn method(&self) -> &http::Method;
    /// The client's address.
    fn remote_ip(&self) -> Option<IpAddr>;
}

/// Which upstream a route sends to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpstreamKey {
    /// A stored upstream, by ID.
    Stored(String),
    /// The route's own (`upstream` inline), by route ID.
    OfRoute(String),
    /// Its service's own, by service ID.
    OfService(String),
}

/// A route with what its service gives it: what a matched request is handled by.
#[derive(Debug)]
pub struct Target {
    /// The route.
    pub route: Route,
    /// The route's plugins over its service's.
    pub plugins: Plugins,
    /// Where requests go (`None`: nowhere configured).
    pub upstream: Option<UpstreamKey>,
    /// WebSocket upgrades pass.
    pub websocket: bool,
    /// The route's timeouts, if it sets them.
    pub timeout: Option<Timeout>,
}

#[derive(Debug, Clone)]
struct Candidate {
    target: usize,
    path: PathPattern,
}

#[derive(Debug, Default)]
struct Bucket {
    exact: HashMap<String, Vec<Candidate>>,
    ordered: Vec<Candidate>,
}

/// A route left out of the table, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The route.
    pub route: String,
    /// Why.
    pub why: String,
}

/// The compiled routing table. See the module docs.
#[derive(Debug, Default)]
pub struct Table {
    targets: Vec<Arc<Target>>,
    exact_hosts: HashMap<String, Bucket>,
    /// By suffix, longest first.
    suffix_hosts: Vec<(String, Bucket)>,
    any_host: Bucket,
}

impl Bucket {
    fn add(&mut self, target: usize, path: &PathPattern) {
        let c = Candidate {
            target,
            path: path.clone(),
        };
        match path {
            PathPattern::Exact(p) => self.exact.entry(p.clone()).or_default().push(c),
            _ => self.ordered.push(c),
        }
    }

    fn sort(&mut self, targets: &[Arc<Target>]) {
        let by_priority = |a: &Candidate, b: &Candidate| {
            let (ra, rb) = (&targets[a.target].route, &targets[b.target].route);
            rb.priority
                .cmp(&ra.priority)
                .then_with(|| ra.id.cmp(&rb.id))
        };
        for list in self.exact.values_mut() {
            list.sort_by(by_priority);
        }
        let kind = |p: &PathPattern| match p {
            PathPattern::Exact(_) => 0,
            PathPattern::Params(_) => 1,
            PathPattern::Prefix(_) => 2,
        };
        self.ordered.sort_by(|a, b| {
            kind(&a.path)
                .cmp(&kind(&b.path))
                .then_with(|| b.path.literal_len().cmp(&a.path.literal_len()))
                .then_with(|| by_priority(a, b))
        });
    }

    fn find<'a>(
        &'a self,
        targets: &'a [Arc<Target>],
        req: &dyn Request,
    ) -> Option<&'a Arc<Target>> {
        let path = req.path();
        let exact = self.exact.get(path).into_iter().flatten();
        exact
            .chain(self.ordered.iter().filter(|c| c.path.matches(path)))
            .map(|c| &targets[c.target])
            .find(|t| admits(&t.route, req))
    }
}

/// The route's predicates other than host and path.
fn admits(route: &Route, req: &dyn Request) -> bool {
    (route.methods.is_empty() || route.methods.contains(req.method()))
        && (route.remote_addrs.is_empty()
            || req
                .remote_ip()
                .is_some_and(|ip| route.remote_addrs.iter().any(|n| n.contains(&ip))))
        && route.vars.iter().all(|e| e.eval(req))
}

impl Table {
    /// Compiles `routes` (with their `services` and `plugin_configs`, over `base`: the
    /// plugins every route takes where it has none). Routes naming a missing service or
    /// plugin config are left out, and reported.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = &'a Route>,
        services: &BTreeMap<String, Service>,
        plugin_configs: &BTreeMap<String, PluginSet>,
        base: &Plugins,
    ) -> (Table, Vec<Skipped>) {
        let mut table = Table::default();
        let mut skipped = Vec::new();
        let mut suffixes: BTreeMap<String, Bucket> = BTreeMap::new();
        for route in routes {
            if !route.enabled {
                continue;
            }
            let service = match &route.service_id {
                None => None,
                Some(id) => match services.get(id) {
                    Some(s) => Some(s),
                    None => {
                        skipped.push(Skipped {
                            route: route.id.clone(),
                            why: format!("service {id} does not exist"),
                        });
                        continue;
                    }
                },
            };
            let upstream = if route.upstream.is_some() {
                Some(UpstreamKey::OfRoute(route.id.clone()))
            } else if let Some(id) = &route.upstream_id {
                Some(UpstreamKey::Stored(id.clone()))
            } else {
                match (service, &route.service_id) {
                    (Some(s), Some(sid)) if s.upstream.is_some() => {
                        Some(UpstreamKey::OfService(sid.clone()))
                    }
                    (Some(s), _) => s.upstream_id.clone().map(UpstreamKey::Stored),
                    _ => None,
                }
            };
            let own = match &route.plugin_config_id {
                None => None,
                Some(id) => match plugin_configs.get(id) {
                    Some(pc) => Some(route.plugins.over(&pc.plugins)),
                    None => {
                        skipped.push(Skipped {
                            route: route.id.clone(),
                            why: format!("plugin config {id} does not exist"),
                        });
                        continue;
                    }
                },
            };
            let own = own.as_ref().unwrap_or(&route.plugins);
            let plugins = match service {
                Some(s) => own.over(&s.plugins),
                None => own.clone(),
            };
            let plugins = plugins.over(base);
            let hosts = match (route.hosts.is_empty(), service) {
                (true, Some(s)) => s.hosts.clone(),
                _ => route.hosts.clone(),
            };
            let index = table.targets.len();
            table.targets.push(Arc::new(Target {
                websocket: route
                    .enable_websocket
                    .unwrap_or_else(|| service.is_some_and(|s| s.enable_websocket)),
                timeout: route.timeout,
                route: route.clone(),
                plugins,
                upstream,
            }));
            for path in &route.paths {
                if hosts.is_empty() {
                    table.any_host.add(index, path);
                }
                for host in &hosts {
                    match host {
                        HostPattern::Exact(h) => table
                            .exact_hosts
                            .entry(h.clone())
                            .or_default()
                            .add(index, path),
                        HostPattern::Suffix(s) => {
                            suffixes.entry(s.clone()).or_default().add(index, path)
                        }
                    }
                }
            }
        }
        table.suffix_hosts = suffixes.into_iter().collect();
        table
            .suffix_hosts
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let targets = std::mem::take(&mut table.targets);
        for b in table.exact_hosts.values_mut() {
            b.sort(&targets);
        }
        for (_, b) in table.suffix_hosts.iter_mut() {
            b.sort(&targets);
        }
        table.any_host.sort(&targets);
        table.targets = targets;
        (table, skipped)
    }

    /// The route that handles `req`, if any.
    pub fn find(&self, req: &dyn Request) -> Option<&Arc<Target>> {
        let host = req.host();
        if let Some(t) = self
            .exact_hosts
            .get(host)
            .and_then(|b| b.find(&self.targets, req))
        {
            return Some(t);
        }
        for (suffix, bucket) in &self.suffix_hosts {
            if suffix.is_empty() || (host.ends_with(suffix.as_str()) && host.len() > suffix.len()) {
                if let Some(t) = bucket.find(&self.targets, req) {
                    return Some(t);
                }
            }
        }
        self.any_host.find(&self.targets, req)
    }

    /// Every route in the table.
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;

    struct Req {
        host: &'static str,
        path: &'static str,
        method: http::Method,
        headers: Vec<(&'static str, &'static str)>,
    }

    impl Vars for Req {
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            let h = name.strip_prefix("http_")?;
            self.headers
                .iter()
                .find(|(k, _)| *k == h)
                .map(|(_, v)| Cow::Borrowed(*v))
        }
    }

    impl Request for Req {
        fn host(&self) -> &str {
            self.host
        }
        fn path(&self) -> &str {
            self.path
        }
        fn method(&self) -> &http::Method {
            &self.method
        }
        fn remote_ip(&self) -> Option<IpAddr> {
            "127.0.0.1".parse().ok()
        }
    }

    fn get(host: &'static str, path: &'static str) -> Req {
        Req {
            host,
            path,
            method: http::Method::GET,
            headers: Vec::new(),
        }
    }

    fn table(routes: serde_json::Value) -> Table {
        let routes: Vec<Route> = routes
            .as_object()
            .expect("object")
            .iter()
            .map(|(id, v)| Route::parse(id, v).expect("route"))
            .collect();
        Table::build(
            &routes,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &Plugins::default(),
        )
        .0
    }

    fn id(t: &Table, r: &Req) -> Option<String> {
        t.find(r).map(|t| t.route.id.clone())
    }

    #[test]
    fn stated_order() {
        let t = table(json!({
            "any-exact": {"uri": "/a", "upstream_id": "u"},
            "any-prefix": {"uri": "/*", "upstream_id": "u"},
            "any-longer": {"uri": "/a/b/*", "upstream_id": "u"},
            "host-prefix": {"uri": "/*", "host": "x.com", "upstream_id": "u"},
            "wild": {"uri": "/a", "host": "*.y.com", "upstream_id": "u"},
            "wilder": {"uri": "/a", "host": "*.b.y.com", "upstream_id": "u"},
            "lo": {"uri": "/p", "priority": 1, "upstream_id": "u"},
            "hi": {"uri": "/p", "priority": 5, "upstream_id": "u"},
            "a-tie": {"uri": "/q", "upstream_id": "u"},
            "b-tie": {"uri": "/q", "upstream_id": "u"},
            "param": {"uri": "/u/:id", "upstream_id": "u"},
            "post": {"uri": "/m", "methods": ["POST"], "upstream_id": "u"},
            "hdr": {"uri": "/m", "vars": [["http_x", "==", "1"]], "upstream_id": "u"},
            "off": {"uri": "/off", "status": 0, "upstream_id": "u"},
        }));
        // A host beats any path specificity of host-less routes.
        assert_eq!(id(&t, &get("x.com", "/a")).as_deref(), Some("host-prefix"));
        assert_eq!(id(&t, &get("z.com", "/a")).as_deref(), Some("any-exact"));
        assert_eq!(
            id(&t, &get("z.com", "/a/b/c")).as_deref(),
            Some("any-longer")
        );
        assert_eq!(id(&t, &get("z.com", "/a/c")).as_deref(), Some("any-prefix"));
        // The longer wildcard suffix first; a wildcard never matches its bare suffix.
        assert_eq!(id(&t, &get("a.b.y.com", "/a")).as_deref(), Some("wilder"));
        assert_eq!(id(&t, &get("a.y.com", "/a")).as_deref(), Some("wild"));
        assert_eq!(id(&t, &get("y.com", "/a")).as_deref(), Some("any-exact"));
        assert_eq!(id(&t, &get("h", "/p")).as_deref(), Some("hi"));
        assert_eq!(id(&t, &get("h", "/q")).as_deref(), Some("a-tie"));
        assert_eq!(id(&t, &get("h", "/u/7")).as_deref(), Some("param"));
        // Predicates: the next candidate is tried.
        assert_eq!(id(&t, &get("h", "/m")).as_deref(), Some("any-prefix"));
        let mut post = get("h", "/m");
        post.method = http::Method::POST;
        assert_eq!(id(&t, &post).as_deref(), Some("post"));
        let mut hdr = get("h", "/m");
        hdr.headers.push(("x", "1"));
        assert_eq!(id(&t, &hdr).as_deref(), Some("hdr"));
        assert_eq!(id(&t, &get("h", "/off")).as_deref(), Some("any-prefix"));
    }

    #[test]
    fn services_fill_in() {
        let mut services = BTreeMap::new();
        services.insert(
            "s".to_string(),
            Service::parse(&json!({"hosts": ["svc.com"], "upstream": {"nodes": {"127.0.0.1:1": 1}}, "enable_websocket": true}))
                .expect("service"),
        );
        let routes = [
            Route::parse("r", &json!({"uri": "/*", "service_id": "s"})).expect("route"),
            Route::parse("gone", &json!({"uri": "/g", "service_id": "missing"})).expect("route"),
        ];
        let (t, skipped) = Table::build(&routes, &services, &BTreeMap::new(), &Plugins::default());
        assert_eq!(skipped.len(), 1);
        let hit = t
            .find(&get("svc.com", "/x"))
            .expect("matched by the service's host");
        assert_eq!(hit.upstream, Some(UpstreamKey::OfService("s".into())));
        assert!(hit.websocket);
        assert!(t.find(&get("other.com", "/x")).is_none());
    }

    #[test]
    fn plugin_configs_and_the_global_base_fill_in_what_routes_lack() {
        use crate::Kind;
        let mut configs = BTreeMap::new();
        configs.insert(
            "pc".to_string(),
            PluginSet::parse(
                Kind::PluginConfig,
                &json!({"plugins": {"cors": {}, "proxy-rewrite": {"uri": "/from-config"}}}),
            )
            .expect("plugin config"),
        );
        let base = PluginSet::parse(
            Kind::GlobalRule,
            &json!({"plugins": {"response-rewrite": {"status_code": 299}, "cors": {"allow_origins": "https://g.example"}}}),
        )
        .expect("global rule")
        .plugins;
        let up = json!({"nodes": {"127.0.0.1:1": 1}});
        let routes = [
            Route::parse(
                "r",
                &json!({"uri": "/r", "plugin_config_id": "pc", "upstream": up,
                    "plugins": {"proxy-rewrite": {"uri": "/own"}}}),
            )
            .expect("route"),
            Route::parse(
                "gone",
                &json!({"uri": "/g", "plugin_config_id": "nope", "upstream": up}),
            )
            .expect("route"),
        ];
        let (t, skipped) = Table::build(&routes, &BTreeMap::new(), &configs, &base);
        assert_eq!(
            skipped.len(),
            1,
            "a missing plugin config leaves the route out"
        );
        let hit = t.find(&get("a.com", "/r")).expect("route");
        let p = &hit.plugins;
        let uri = p.proxy_rewrite.as_ref().and_then(|r| r.uri.as_ref());
        assert_eq!(
            uri.and_then(|u| u.text()).as_deref(),
            Some("/own"),
            "the route's own wins"
        );
        assert!(
            p.cors.as_ref().is_some_and(|c| c.allow_origins == "*"),
            "the config's over the global"
        );
        assert_eq!(
            p.response_rewrite.as_ref().and_then(|r| r.status_code),
            Some(299)
        );
        assert!(t.find(&get("a.com", "/g")).is_none());
    }
}
