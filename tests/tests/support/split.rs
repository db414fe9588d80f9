//! The platform split into processes, as deploy/ runs it: each part in a runtime (and thread)
//! of its own, so killing one drops every task and socket it had, as a dead pod would.
use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use thali::Part;
use thali_platform::{Config, auth::Signer, config::Overrides};
use tokio::sync::oneshot;

/// Every part that runs alone.
pub const PARTS: [Part; 6] = [
    Part::Identity,
    Part::Storefront,
    Part::Notifications,
    Part::Booking,
    Part::Payments,
    Part::Facade,
];

/// One running part.
pub struct Proc {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    command: Option<oneshot::Sender<bool>>,
    drained: Option<oneshot::Receiver<anyhow::Result<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `part` with `env` (on top of loopback addresses on free ports).
    pub fn start(part: Part, env: &HashMap<String, String>) -> Self {
        let mut env = env.clone();
        for key in [
            "THALI_HTTP_ADDR",
            "THALI_GRPC_ADDR",
            "THALI_ADMIN_ADDR",
            "THALI_SANDBOX_ADDR",
        ] {
            env.entry(key.to_owned()).or_insert_with(|| "127.0.0.1:0".to_owned());
        }
        // Each part holds its own keys (ADR 0029); one process running every part holds identity's.
        if let Some(data_dir) = env.get("THALI_DATA_DIR").cloned() {
            env.entry("THALI_KEYS_DIR".to_owned()).or_insert_with(|| {
                Shared::keys_dir_in(&PathBuf::from(data_dir), part)
                    .display()
                    .to_string()
            });
        }
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        let (command, command_rx) = oneshot::channel::<bool>();
        let (drained_tx, drained) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let cfg = Config::load_from(None, Some(env), &Overrides::default()).unwrap();
                let platform = thali::start(&cfg, part).await.unwrap();
                addrs_tx
                    .send((platform.grpc_addr, platform.http_addr, platform.admin_addr))
                    .unwrap();
                // true: drain as on SIGTERM; false or dropped: die at once.
                if command_rx.await == Ok(true) {
                    let _ = drained_tx.send(platform.shutdown().await);
                }
            });
            // Every task of this part (listeners and connections included) is dropped here, before
            // `kill` returns: its ports are free again.
            runtime.shutdown_timeout(Duration::from_secs(5));
        });
        let (grpc, http, admin) = addrs_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the part started");
        Self {
            grpc,
            http,
            admin,
            command: Some(command),
            drained: Some(drained),
            thread: Some(thread),
        }
    }

    /// Kills the part: its tasks are dropped and its connections reset, with no goodbye.
    pub fn kill(&mut self) {
        if let Some(command) = self.command.take() {
            let _ = command.send(false);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Shuts the part down as SIGTERM does, and waits for the drain to end.
    pub async fn drain(&mut self) -> anyhow::Result<()> {
        self.command.take().expect("running").send(true).unwrap();
        let result = self.drained.take().unwrap().await.expect("the part reports its drain");
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .unwrap()
                .unwrap();
        }
        result
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc.unwrap())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.unwrap())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every part of one split platform shares: the database, Redis when there is one, the
/// key pair, and the client-stack settings of the test.
pub struct Shared {
    pub env: HashMap<String, String>,
    pub data_dir: PathBuf,
    _database: Option<thali_platform::testing::TestDatabase>,
}

impl Shared {
    /// On PostgreSQL when configured (required under CI), else a SQLite file; with Redis when
    /// `redis` is given. Migrated and keyed, as `thali migrate` and `thali keys init` do.
    pub async fn new(redis: Option<String>, extra: &[(&str, &str)]) -> Self {
        let data_dir = std::env::temp_dir().join(format!("thali-split-{}", uuid::Uuid::now_v7()));
        let database = thali_platform::testing::postgres().await;
        let mut env: HashMap<String, String> = [("THALI_DATA_DIR", data_dir.display().to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        for (key, value) in super::UNLIMITED {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        if let Some(pg) = &database {
            env.insert("THALI_DATABASE_URL".into(), pg.url.clone());
        }
        if let Some(url) = redis {
            env.insert("THALI_REDIS_URL".into(), url);
        }
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let cfg = Config::load_from(None, Some(env.clone()), &Overrides::default()).unwrap();
        // `thali keys init` in each part's keys dir, and `thali keys publish` of every part's
        // public keys into the trusted keys dir they all read.
        for part in PARTS {
            let dir = Self::keys_dir_in(&data_dir, part);
            thali_platform::auth::ensure_key_pair(&dir).unwrap();
            thali_platform::auth::publish(&dir, part.service_name(), &cfg.trusted_keys_dir()).unwrap();
        }
        thali::migrate(&cfg).await.unwrap();
        Self {
            env,
            data_dir,
            _database: database,
        }
    }

    /// This environment plus `extra`.
    pub fn with(&self, extra: &[(&str, String)]) -> HashMap<String, String> {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.insert((*k).to_owned(), v.clone());
        }
        env
    }

    /// Identity's signer: mints user tokens.
    pub fn signer(&self) -> Signer {
        Signer::load(&self.keys_dir(Part::Identity)).unwrap()
    }

    /// The keys dir of `part`.
    pub fn keys_dir(&self, part: Part) -> PathBuf {
        Self::keys_dir_in(&self.data_dir, part)
    }

    fn keys_dir_in(data_dir: &std::path::Path, part: Part) -> PathBuf {
        let part = if part == Part::All { Part::Identity } else { part };
        data_dir.join("keys").join(part.service_name())
    }
}
