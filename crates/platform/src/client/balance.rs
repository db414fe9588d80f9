//! The endpoints of one target and the choice among them: power of two choices (two endpoints
//! drawn at random, the one with fewer calls in flight wins) over the endpoints whose breaker
//! admits calls. Endpoints come from a comma-separated list of URLs, or from one DNS name that
//! is resolved again every few seconds (a Kubernetes headless Service), keeping the breaker and
//! connection of every address that stays.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::{GrpcChannel, breaker::Breaker};

/// One address of a target, with its own connection and breaker.
pub struct Endpoint {
    /// `ip:port` (or the URL's authority for a listed endpoint): the metrics label.
    pub addr: String,
    pub channel: GrpcChannel,
    pub breaker: Breaker,
    in_flight: AtomicUsize,
}

impl Endpoint {
    pub fn new(addr: String, channel: GrpcChannel, breaker: Breaker) -> Self {
        Self {
            addr,
            channel,
            breaker,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Counts a call in flight until the guard drops.
    pub fn start_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A call in flight on an endpoint.
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The current endpoints of a target; replaced whole when discovery finds a change.
#[derive(Default)]
pub struct EndpointSet {
    current: RwLock<Arc<Vec<Arc<Endpoint>>>>,
}

impl EndpointSet {
    pub fn snapshot(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.current.read().expect("endpoint set lock").clone()
    }

    /// Makes `urls` the endpoints, keeping those already there; `make` builds a new one.
    pub fn update(&self, urls: &[String], make: impl Fn(&str) -> Option<Endpoint>) {
        let old = self.snapshot();
        let next: Vec<Arc<Endpoint>> = urls
            .iter()
            .filter_map(|url| match old.iter().find(|e| e.addr == label(url)) {
                Some(kept) => Some(kept.clone()),
                None => make(url).map(Arc::new),
            })
            .collect();
        let changed = next.len() != old.len() || next.iter().zip(old.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            tracing::info!(endpoints = ?urls, "client: endpoints changed");
            *self.current.write().expect("endpoint set lock") = Arc::new(next);
        }
    }
}

/// The metrics label of an endpoint URL: its authority (`ip:port`).
pub fn label(url: &str) -> String {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

/// Power of two choices among the endpoints whose breaker admits calls (and that did not just
/// refuse this call), preferring those this call has not tried yet (indexes in `endpoints`).
pub fn choose(endpoints: &[Arc<Endpoint>], tried: &[usize], refused: &[usize]) -> Option<usize> {
    let open: Vec<usize> = (0..endpoints.len())
        .filter(|&i| !refused.contains(&i) && endpoints[i].breaker.available())
        .collect();
    let fresh: Vec<usize> = open.iter().copied().filter(|i| !tried.contains(i)).collect();
    let pool = if fresh.is_empty() { open } else { fresh };
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (pool[a], pool[b]);
            Some(if endpoints[b].load() < endpoints[a].load() {
                b
            } else {
                a
            })
        }
    }
}

/// Where a target's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Listed URLs, used as given.
    Static(Vec<String>),
    /// One host name, resolved again and again; every address becomes `scheme://ip:port`.
    Dns { scheme: String, host: String, port: u16 },
}

impl Discovery {
    /// Reads `THALI_<SERVICE>_URL`: `http://a:1,http://b:2`, or one `http://name:port`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let urls: Vec<&str> = spec.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if urls.is_empty() {
            return Err("no endpoint given".into());
        }
        let mut parsed = Vec::new();
        for url in &urls {
            let uri: http::Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
            let scheme = uri.scheme_str().ok_or_else(|| format!("`{url}` has no scheme"))?;
            if scheme != "http" && scheme != "https" {
                return Err(format!("`{url}` is not an http(s) URL"));
            }
            let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
            let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
            parsed.push((
                scheme.to_owned(),
                host.trim_matches(['[', ']']).to_owned(),
                port,
                url.to_string(),
            ));
        }
        if let [(scheme, host, port, _)] = parsed.as_slice()
            && host.parse::<IpAddr>().is_err()
        {
            return Ok(Discovery::Dns {
                scheme: scheme.clone(),
                host: host.clone(),
                port: *port,
            });
        }
        Ok(Discovery::Static(parsed.into_iter().map(|(.., url)| url).collect()))
    }

    /// The endpoint URLs now: the list, or the name's addresses (sorted; None if it did not
    /// resolve, so the caller keeps what it had).
    pub async fn resolve(&self) -> Option<Vec<String>> {
        match self {
            Discovery::Static(urls) => Some(urls.clone()),
            Discovery::Dns { scheme, host, port } => match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => {
                    let mut found: Vec<SocketAddr> = addrs.collect();
                    found.sort();
                    found.dedup();
                    Some(found.iter().map(|a| format!("{scheme}://{a}")).collect())
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, "client: the target's name does not resolve; keeping its endpoints");
                    None
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{breaker::BreakerSettings, tests::test_channel};

    fn endpoint(addr: &str) -> Endpoint {
        Endpoint::new(
            addr.to_owned(),
            test_channel(&format!("http://{addr}")),
            Breaker::new(BreakerSettings::default(), "t", addr),
        )
    }

    #[test]
    fn a_list_is_static_and_one_name_is_resolved() {
        assert_eq!(
            Discovery::parse("http://127.0.0.1:1, http://127.0.0.1:2").unwrap(),
            Discovery::Static(vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()])
        );
        assert_eq!(
            Discovery::parse("http://127.0.0.1:1").unwrap(),
            Discovery::Static(vec!["http://127.0.0.1:1".into()])
        );
        assert_eq!(
            Discovery::parse("http://storefront-headless:50051").unwrap(),
            Discovery::Dns {
                scheme: "http".into(),
                host: "storefront-headless".into(),
                port: 50051
            }
        );
        assert!(Discovery::parse("").is_err());
        assert!(Discovery::parse("ftp://x:1").is_err());
        assert!(Discovery::parse("http://").is_err());
    }

    #[tokio::test]
    async fn a_name_resolves_to_every_address() {
        let found = Discovery::parse("http://localhost:50051")
            .unwrap()
            .resolve()
            .await
            .unwrap();
        assert!(found.contains(&"http://127.0.0.1:50051".to_owned()), "{found:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_balancer_skips_an_endpoint_whose_breaker_is_open() {
        let endpoints: Vec<Arc<Endpoint>> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .into_iter()
            .map(|a| Arc::new(endpoint(a)))
            .collect();
        for _ in 0..5 {
            endpoints[1].breaker.admit().unwrap().failure();
        }
        for _ in 0..1000 {
            assert_ne!(choose(&endpoints, &[], &[]), Some(1));
        }
        // Every breaker open: nothing to choose.
        for e in [&endpoints[0], &endpoints[2]] {
            for _ in 0..5 {
                e.breaker.admit().unwrap().failure();
            }
        }
        assert_eq!(choose(&endpoints, &[], &[]), None);
    }

    #[tokio::test]
    async fn two_choices_prefer_the_less_busy_and_an_untried_endpoint() {
        let endpoints: Vec<Arc<Endpoint>> = ["127.0.0.1:1", "127.0.0.1:2"]
            .into_iter()
            .map(|a| Arc::new(endpoint(a)))
            .collect();
        let _busy: Vec<InFlight> = (0..3).map(|_| endpoints[0].start_call()).collect();
        for _ in 0..100 {
            assert_eq!(choose(&endpoints, &[], &[]), Some(1));
            assert_eq!(choose(&endpoints, &[1], &[]), Some(0));
        }
    }

    #[tokio::test]
    async fn an_update_keeps_the_endpoints_that_stay() {
        let set = EndpointSet::default();
        set.update(&["127.0.0.1:1".into(), "127.0.0.1:2".into()], |a| Some(endpoint(a)));
        let before = set.snapshot();
        set.update(&["127.0.0.1:2".into(), "127.0.0.1:3".into()], |a| Some(endpoint(a)));
        let after = set.snapshot();
        assert!(Arc::ptr_eq(&before[1], &after[0]));
        assert_eq!(after[1].addr, "127.0.0.1:3");
    }
}
