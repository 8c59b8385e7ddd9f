//! The state requests share: the configuration generation a SIGHUP replaces (auth, clusters,
//! limits), and what lives as long as the process (in-flight budget, metrics, spool, the
//! background tasks the drain waits for).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{AuthMode, Config};
use crate::error::BoxError;
use crate::inflight::Inflight;
use crate::metrics::Metrics;
use crate::spool::Spool;
use crate::upstream::{self, Upstreams};

/// Everything a SIGHUP replaces, built from one `proxy.toml`. A request keeps the generation
/// it started with until it is answered.
pub struct Generation {
    pub config: Config,
    /// Mode `proxy` only.
    pub auth: Option<Arc<Authenticator>>,
    pub upstreams: Upstreams,
}

impl Generation {
    /// The cluster a route names; validation guarantees routes name existing clusters.
    pub fn cluster(&self, name: &str) -> Arc<upstream::Cluster> {
        self.upstreams
            .get(name)
            .cloned()
            .expect("validated routes name existing clusters")
    }

    /// Clusters whose settings did not change are taken over from `previous` with their
    /// health state and connection pools.
    pub fn new(config: Config, metrics: &Arc<Metrics>, previous: Option<&Upstreams>) -> Self {
        Self {
            upstreams: Upstreams::new(&config, metrics, previous),
            auth: (config.auth.mode == AuthMode::Proxy)
                .then(|| Arc::new(Authenticator::new(&config.auth))),
            config,
        }
    }
}

/// State shared by every request, built once.
pub struct Shared {
    pub current: Arc<ArcSwap<Generation>>,
    pub inflight: Arc<Inflight>,
    /// Set when shutdown starts: `/ready` answers 503 from then on.
    pub draining: AtomicBool,
    /// Mirror deliveries, which outlive the request that started them; the drain waits for
    /// them.
    pub background: TaskTracker,
    pub metrics: Arc<Metrics>,
    /// `[spool] enabled` only.
    pub spool: Option<Spool>,
    /// The threads gzip bodies are decoded on, one per core.
    pub decoders: crate::gzip::Decoders,
}

impl Shared {
    /// Builds the shared state; opens (and recovers) the spool and starts its replay. Must be
    /// called within a Tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Self>, BoxError> {
        let metrics = Arc::new(Metrics::new());
        let inflight = Inflight::new(config.server.max_inflight_bytes);
        let spool_config = config.spool.clone();
        let names: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
        let current = Arc::new(ArcSwap::from_pointee(Generation::new(
            config, &metrics, None,
        )));
        let spool = match spool_config {
            Some(spool_config) => {
                let spool = Spool::open(&spool_config, &metrics)?;
                spool.add_clusters(&names, lookup(&current))?;
                Some(spool)
            }
            None => None,
        };
        Ok(Arc::new(Self {
            current,
            inflight,
            draining: AtomicBool::new(false),
            background: TaskTracker::new(),
            metrics,
            spool,
            decoders: crate::gzip::Decoders::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }))
    }

    /// The configuration new requests use.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Makes `config` the one new requests use; requests in flight finish on theirs. Returns
    /// the changed keys that only a restart applies (listeners, TLS, spool, …).
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, BoxError> {
        let old = self.current.load_full();
        let needs_restart = old.config.needs_restart(&config);
        let names: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
        // New clusters get their spool queue first: once the generation is live, writes may
        // need it.
        if let Some(spool) = &self.spool {
            spool.add_clusters(&names, lookup(&self.current))?;
        }
        let generation = Generation::new(config, &self.metrics, Some(&old.upstreams));
        self.current.store(Arc::new(generation));
        Ok(needs_restart)
    }
}

/// Finds a cluster of the current generation by name (spool replay follows reloads).
fn lookup(current: &Arc<ArcSwap<Generation>>) -> upstream::ClusterLookup {
    let current = current.clone();
    Arc::new(move |name: &str| current.load().upstreams.get(name).cloned())
}
