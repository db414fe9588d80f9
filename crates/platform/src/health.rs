//! What a process says about itself and what it depends on.
//!
//! Readiness is the process's own state: ready once started, not ready while draining after
//! SIGTERM. It never follows a shared or downstream dependency (database, Redis, another
//! service): one database blip must not take every pod out of its Service, and the cached
//! answers a pod keeps are worth serving while the database is away. Each dependency's state is
//! the `dependency_up{dependency}` gauge, an entry of `/healthz`, and an informational entry of
//! the gRPC health service under the dependency's name.
use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

/// The health of one process; clones share it.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<Mutex<Vec<&'static str>>>,
    dependencies: Arc<Mutex<BTreeMap<&'static str, bool>>>,
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Not ready, serving nothing, until [`Self::serving`] and [`Self::set_ready`].
    pub fn new() -> Self {
        Self {
            reporter: HealthReporter::new(),
            services: Arc::default(),
            dependencies: Arc::default(),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The gRPC health service's handle.
    pub fn reporter(&self) -> HealthReporter {
        self.reporter.clone()
    }

    /// Answers SERVING for `S` (and for the whole server, "") from now until draining.
    pub async fn serving<S: NamedService>(&self) {
        self.services.lock().expect("health lock").push(S::NAME);
        self.reporter.set_service_status(S::NAME, ServingStatus::Serving).await;
        self.reporter.set_service_status("", ServingStatus::Serving).await;
    }

    /// The process has started: `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// SIGTERM: `/readyz` answers 503 and every gRPC service NOT_SERVING, so load balancers and
    /// clients stop sending new calls while the in-flight ones finish.
    pub async fn drain(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let services = self.services.lock().expect("health lock").clone();
        for name in services.into_iter().chain([""]) {
            self.reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
    }

    /// Probes dependency `name` every `interval` and reports it (gauge, `/healthz`, gRPC health
    /// entry `name`); never touches readiness. Runs until the process ends.
    pub fn watch_dependency<F, Fut>(
        &self,
        name: &'static str,
        interval: Duration,
        probe: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let health = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let up = tokio::time::timeout(interval.max(Duration::from_secs(1)), probe())
                    .await
                    .unwrap_or(false);
                metrics::gauge!("dependency_up", "dependency" => name).set(if up { 1.0 } else { 0.0 });
                if last != Some(up) {
                    health.dependencies.lock().expect("health lock").insert(name, up);
                    let status = if up {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    health.reporter.set_service_status(name, status).await;
                    if up {
                        tracing::info!(dependency = name, "dependency answers");
                    } else {
                        tracing::warn!(
                            dependency = name,
                            "dependency does not answer; serving what can be served"
                        );
                    }
                    last = Some(up);
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// As [`Self::watch_dependency`], for a dependency whose state is already known in memory
    /// (a client's connection flag, a target's breakers).
    pub fn watch_flag(
        &self,
        name: &'static str,
        interval: Duration,
        is_up: impl Fn() -> bool + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.watch_dependency(name, interval, move || std::future::ready(is_up()))
    }

    /// `/healthz`: the process is alive; each dependency's state, in words.
    pub fn report(&self) -> serde_json::Value {
        let dependencies: serde_json::Map<String, serde_json::Value> = self
            .dependencies
            .lock()
            .expect("health lock")
            .iter()
            .map(|(name, up)| ((*name).to_owned(), (if *up { "up" } else { "down" }).into()))
            .collect();
        serde_json::json!({
            "status": "alive",
            "ready": self.is_ready(),
            "dependencies": dependencies,
        })
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dependency_down_is_reported_but_readiness_stays() {
        let health = Health::new();
        health.set_ready();
        let up = Arc::new(AtomicBool::new(true));
        let probe = up.clone();
        let watcher = health.watch_dependency("database", Duration::from_millis(10), move || {
            let up = probe.load(Ordering::SeqCst);
            async move { up }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(health.report()["dependencies"]["database"], "up");
        up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(health.report()["dependencies"]["database"], "down");
        assert!(health.is_ready());
        health.drain().await;
        assert!(!health.is_ready());
        watcher.abort();
    }
}
