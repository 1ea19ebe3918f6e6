//! `api-breaker`'s state per route on this member: kept outside routing snapshots (a route
//! change does not close an open breaker), and what an answer does to it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_gateway::plugins::ApiBreaker;

#[derive(Debug, Default)]
struct State {
    unhealthy: u32,
    healthy: u32,
    level: u32,
    open_until: Option<Instant>,
}

/// Breakers by route ID.
#[derive(Debug, Default)]
pub struct Breakers {
    routes: Mutex<HashMap<String, State>>,
}

impl Breakers {
    /// True while `route`'s breaker is open (requests are answered by the breaker).
    pub fn open(&self, route: &str) -> bool {
        let map = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        map.get(route)
            .and_then(|s| s.open_until)
            .is_some_and(|t| Instant::now() < t)
    }

    /// Records the status `route`'s upstream answered with; returns how long the breaker
    /// opened for, if this answer opened it.
    pub fn answered(&self, route: &str, conf: &ApiBreaker, status: u16) -> Option<Duration> {
        let unhealthy = conf.unhealthy_statuses.contains(&status);
        let healthy = conf.healthy_statuses.contains(&status);
        if !unhealthy && !healthy {
            return None;
        }
        let mut map = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.entry(route.to_string()).or_default();
        if healthy {
            s.healthy += 1;
            if s.healthy >= conf.successes {
                map.remove(route);
            }
            return None;
        }
        s.healthy = 0;
        s.unhealthy += 1;
        if !s.unhealthy.is_multiple_of(conf.failures) {
            return None;
        }
        s.level = (s.level + 1).min(16);
        let length = Duration::from_secs((1u64 << s.level).min(conf.max_breaker_sec));
        s.open_until = Some(Instant::now() + length);
        Some(length)
    }

    /// Forgets the routes not in `keep` (deleted ones).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> ApiBreaker {
        ApiBreaker {
            break_response_code: 502,
            break_response_body: None,
            break_response_headers: Vec::new(),
            max_breaker_sec: 300,
            unhealthy_statuses: vec![500],
            failures: 2,
            healthy_statuses: vec![200],
            successes: 2,
        }
    }

    #[test]
    fn opens_doubles_and_closes() {
        let b = Breakers::default();
        let c = conf();
        assert_eq!(b.answered("r", &c, 500), None);
        assert_eq!(b.answered("r", &c, 500), Some(Duration::from_secs(2)));
        assert!(b.open("r"));
        assert!(!b.open("other"));
        assert_eq!(b.answered("r", &c, 500), None);
        assert_eq!(
            b.answered("r", &c, 500),
            Some(Duration::from_secs(4)),
            "doubles"
        );
        assert_eq!(
            b.answered("r", &c, 404),
            None,
            "neither healthy nor unhealthy"
        );
        b.answered("r", &c, 200);
        b.answered("r", &c, 200);
        assert!(!b.open("r"), "closed by successes");
    }
}
