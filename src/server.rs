//! Listeners, the accept loop (with its bound on open connections, handing each connection to
//! a serving thread of `workers.rs`), HTTP/1.1 + h2c through hyper-util's auto builder, and the graceful drain of SPEC §8: on shutdown `/ready` turns
//! 503 at once, the main listener stops accepting, in-flight requests finish (up to
//! `shutdown_grace`), then the process may exit.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::config::Config;
use crate::deadline::{Conn, Expired, Timeouts, Tracked, Watched};
use crate::error::BoxError;
use crate::http::request_id::{new_id, OWN_VERSION};
use crate::http::RequestContext;
use crate::http::Role;
use crate::metrics::Metrics;
use crate::stack;
use crate::state::Shared;
use crate::tls::Acceptor;
use crate::workers::Workers;

/// A proxy whose listeners are bound, ready to serve.
pub struct Bound {
    main: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    tls: Option<Arc<Acceptor>>,
}

impl Bound {
    pub async fn bind(config: Config) -> Result<Bound, BoxError> {
        let main = bind(config.server.listen).await?;
        let admin = match config.server.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let tls_config = config.server.tls.clone();
        let shared = Shared::new(config)?;
        let tls = match tls_config {
            Some(tls) => {
                let acceptor = Acceptor::new(&tls, shared.metrics.clone())
                    .map_err(|e| format!("{}: {}", e.key, e.message))?;
                acceptor.watch();
                Some(acceptor)
            }
            None => None,
        };
        Ok(Bound {
            main,
            admin,
            shared,
            tls,
        })
    }

    /// What SIGHUP calls: re-reads `path` and swaps the configuration in.
    pub fn reloader(&self, path: PathBuf) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
            tls: self.tls.clone(),
            path,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.main
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        let Bound {
            main,
            admin,
            shared,
            tls,
        } = self;
        let startup = shared.generation();
        let streams = startup.config.server.max_streams_per_connection;
        let max_connections = connection_limit(startup.config.server.max_connections);
        let (stop_main, main_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);
        let with_admin = admin.is_none();
        let workers = Arc::new(Workers::start(worker_threads(
            startup.config.server.worker_threads,
        ))?);
        tracing::info!(
            listen = %main.local_addr()?,
            max_connections,
            workers = workers.count(),
            tls = tls.is_some(),
            admin = %admin.as_ref().map_or(Ok("on listen".to_string()), |l| l.local_addr().map(|a| a.to_string()))?,
            version = env!("CARGO_PKG_VERSION"),
            "listening"
        );
        let main_task = tokio::spawn(accept_loop(
            Listening {
                listener: main,
                tls,
                gate: Gate::new(max_connections, Some(shared.metrics.clone())),
                workers: Some(workers.clone()),
            },
            stack::build(shared.clone(), Role::Main { with_admin }),
            builder(streams),
            shared.clone(),
            main_stopped,
        ));
        let admin_task = admin.map(|listener| {
            tokio::spawn(accept_loop(
                Listening {
                    listener,
                    tls: None,
                    gate: Gate::new(ADMIN_CONNECTIONS, None),
                    workers: None,
                },
                stack::build(shared.clone(), Role::Admin),
                builder(streams),
                shared.clone(),
                admin_stopped,
            ))
        });
        drop(startup);

        shutdown.await;
        let generation = shared.generation();
        let server = &generation.config.server;
        tracing::info!(grace = ?server.shutdown_grace, "shutting down: draining in-flight requests");
        shared.draining.store(true, Ordering::SeqCst);
        let _ = stop_main.send(true);
        let drained = main_task.await?;
        let deadline = tokio::time::Instant::now() + server.shutdown_grace;
        let mut outcome = tokio::time::timeout_at(deadline, drained.shutdown()).await;
        // Mirror deliveries of writes already acknowledged get the rest of the grace.
        shared.background.close();
        if outcome.is_ok() {
            outcome = tokio::time::timeout_at(deadline, shared.background.wait()).await;
        }
        let _ = stop_admin.send(true);
        if let Some(task) = admin_task {
            // The admin listener kept answering `/ready` 503 during the drain; close it now.
            let admin_drain = task.await?;
            let _ = tokio::time::timeout(Duration::from_secs(1), admin_drain.shutdown()).await;
        }
        if let Some(spool) = &shared.spool {
            spool.close().await;
            tracing::info!("spool closed");
        }
        match outcome {
            Ok(()) => tracing::info!("drained, exiting"),
            Err(_) => {
                tracing::warn!(grace = ?server.shutdown_grace, "shutdown grace ran out; closing remaining connections")
            }
        }
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}").into())
}

fn builder(max_streams: u32) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Head and keep-alive deadlines are ours (`deadline.rs`): hyper's header timer also
        // runs while a connection is idle.
        .header_read_timeout(None)
        // A client that sends its request and then shuts down its write side (HTTP/1.0-style
        // clients, some load balancers) still gets its answer; without this hyper closes on
        // the EOF and a write it forwarded is acknowledged to nobody.
        .half_close(true)
        // Line-protocol clients send a handful of headers; 100 is plenty and bounds parsing.
        .max_headers(100)
        .keep_alive(true)
        // Smaller reads keep each body frame in cache while it is scanned, and bound the
        // memory a connection holds (64 KiB against 128 KiB on the rig: see the README's
        // "Memory", where the larger read bought CPU with peak RSS over the budget).
        .max_buf_size(crate::body::READ_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .max_header_list_size(64 * 1024)
        // Rapid-reset (CVE-2023-44487) and error-reset floods: cap the streams a client may
        // open and cancel, or make fail, before the connection is closed.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Re-reads `proxy.toml` (and the TLS files) on SIGHUP.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    tls: Option<Arc<Acceptor>>,
    path: PathBuf,
}

impl Reloader {
    /// Loads the file and swaps it in; an invalid file keeps the running configuration.
    /// Either way the outcome is logged and counted in `config_reloads_total`.
    pub fn reload(&self) -> bool {
        tracing::info!(path = %self.path.display(), "reloading configuration");
        let reloads = &self.shared.metrics.config_reloads;
        let outcome = match Config::load(&self.path) {
            Err(errors) => Err(errors.0),
            Ok(config) => self.shared.reload(config).map_err(|e| vec![e.to_string()]),
        };
        if let Some(tls) = &self.tls {
            tls.reload_if_changed();
        }
        match outcome {
            Ok(needs_restart) => {
                reloads.with_label_values(&["success"]).inc();
                tracing::info!(
                    "configuration reloaded; requests in flight finish on the previous one"
                );
                if !needs_restart.is_empty() {
                    tracing::warn!(keys = ?needs_restart, "these changed keys take effect only after a restart");
                }
                true
            }
            Err(errors) => {
                reloads.with_label_values(&["error"]).inc();
                for error in errors {
                    tracing::error!(%error, "reload failed; keeping the running configuration");
                }
                false
            }
        }
    }
}

/// Connections the admin listener keeps open at once: probes and scrapers, never many.
const ADMIN_CONNECTIONS: usize = 256;
/// Refusals (a 503 and a short linger) under way at once; past that, a connection over the
/// limit is closed without an answer.
const REFUSALS: usize = 64;
/// File descriptors kept out of the connection limit: spool segments, logs, the admin
/// listener, TLS files, health checks.
const RESERVED_FDS: u64 = 128;

/// Client connections `listen` keeps open at once: `server.max_connections`, or else half of
/// the open-file limit less a reserve (each client connection may hold a second descriptor
/// upstream). The soft limit is raised to the hard one first, as Go's runtime and nginx's
/// `worker_rlimit_nofile` do, so a default systemd unit (1024 soft) does not cap the proxy
/// at a few hundred clients.
pub fn connection_limit(configured: Option<usize>) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    if let Some(n) = configured {
        return n;
    }
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    let files = limit.current.unwrap_or(1 << 21);
    (files.saturating_sub(RESERVED_FDS) / 2).clamp(16, 1 << 20) as usize
}

/// The bound on a listener's open connections.
struct Gate {
    slots: Arc<Semaphore>,
    limit: usize,
    refusals: Arc<Semaphore>,
    /// The main listener's connection metrics (the admin listener has none).
    metrics: Option<Arc<Metrics>>,
}

/// An accepted connection's place under the limit, given back when it closes.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Option<IntGauge>,
    timed_out: Option<IntCounterVec>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

impl Gate {
    fn new(limit: usize, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            refusals: Arc::new(Semaphore::new(REFUSALS)),
            metrics,
        }
    }

    /// A place for a new connection, or `None` when `limit` are open.
    fn enter(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let open = self.metrics.as_ref().map(|m| m.connections_open.clone());
        if let Some(open) = &open {
            open.inc();
        }
        Some(Slot {
            _permit: permit,
            open,
            timed_out: self
                .metrics
                .as_ref()
                .map(|m| m.connections_timed_out.clone()),
        })
    }

    /// Turns away a connection over the limit: on a plain listener it gets a 503 with
    /// `Retry-After` and its first bytes are read and discarded (up to 64 KiB or a second)
    /// before the close, so the client reads the answer rather than a reset; on a TLS
    /// listener it is closed.
    fn refuse(&self, mut stream: TcpStream, plain: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.connections_refused.inc();
        }
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            return;
        };
        if !plain {
            return;
        }
        let message = format!(
            "too many open connections (server.max_connections = {}); retry later",
            self.limit
        );
        let body = format!("{}\n", serde_json::json!({ "error": message }));
        let id = new_id();
        let id = id.to_str().unwrap_or_default();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nRetry-After: 1\r\nX-Influxdb-Error: {message}\r\n\
             X-Influxdb-Version: {OWN_VERSION}\r\nX-Request-Id: {id}\r\nRequest-Id: {id}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::spawn(async move {
            let _permit = permit;
            let linger = async {
                stream.write_all(answer.as_bytes()).await?;
                stream.shutdown().await?;
                let (mut sink, mut read) = ([0u8; 8192], 0);
                while read < 64 * 1024 {
                    match stream.read(&mut sink).await? {
                        0 => break,
                        n => read += n,
                    }
                }
                Ok::<_, std::io::Error>(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
        });
    }
}

/// Accepts until told to stop; returns the handle that drains the connections it started.
/// A listener and how its connections are taken: over TLS or not, under which bound on open
/// connections, on the serving threads or on the runtime that accepted them.
struct Listening {
    listener: TcpListener,
    tls: Option<Arc<Acceptor>>,
    gate: Gate,
    workers: Option<Arc<Workers>>,
}

async fn accept_loop(
    listening: Listening,
    service: stack::Stack,
    builder: auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown {
    let Listening {
        listener,
        tls,
        gate,
        workers,
    } = listening;
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(slot) = gate.enter() else {
            tracing::warn!(%peer, limit = gate.limit, "connection refused: max_connections are open");
            gate.refuse(stream, tls.is_none());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let timeouts = timeouts(&shared.generation().config);
        let service =
            service
                .clone()
                .map_request(move |request: http::Request<hyper::body::Incoming>| {
                    let mut request = request.map(crate::body::RequestBody::new);
                    RequestContext::of_mut(&mut request).peer = Some(peer);
                    request
                });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        let run = move |stream: TcpStream| async move {
            let Some(tls) = tls else {
                let conn = Conn::new(timeouts);
                let service = TowerToHyperService::new(Tracked::new(service, conn.clone()));
                let connection = builder
                    .serve_connection(TokioIo::new(Watched::new(stream, conn.clone())), service)
                    .into_owned();
                return serve(peer, conn, slot, watcher.watch(connection)).await;
            };
            // The handshake runs in the connection's own task, so a slow client cannot hold
            // up the accept loop; plaintext or garbage fails it and the connection is closed.
            let stream = match tls.accept(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            // The head deadline starts once the handshake is done (it has its own).
            let conn = Conn::new(timeouts);
            let service = TowerToHyperService::new(Tracked::new(service, conn.clone()));
            let connection = builder
                .serve_connection(TokioIo::new(Watched::new(stream, conn.clone())), service)
                .into_owned();
            serve(peer, conn, slot, watcher.watch(connection)).await;
        };
        match &workers {
            Some(workers) => workers.serve(stream, peer, run),
            None => drop(tokio::spawn(run(stream))),
        }
    }
    graceful
}

/// The serving threads for `server.worker_threads`: one per CPU unless set.
pub fn worker_threads(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A new connection's deadlines under `config`. A response may take as long to send as the
/// longest request may take to serve: `request_timeout`, or `[query] timeout` for answers
/// streamed from the read path.
fn timeouts(config: &crate::config::Config) -> Timeouts {
    let server = &config.server;
    Timeouts {
        head: server.header_read_timeout,
        idle: server.keepalive_timeout,
        answer: config.query.as_ref().map_or(server.request_timeout, |q| {
            q.timeout.max(server.request_timeout)
        }),
    }
}

/// Runs a connection until it ends or waits past one of its deadlines; dropping it then
/// closes the socket and gives its slot back.
async fn serve<E: std::fmt::Display>(
    peer: SocketAddr,
    conn: Arc<Conn>,
    slot: Slot,
    connection: impl Future<Output = Result<(), E>>,
) {
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        why = conn.expired() => {
            tracing::debug!(%peer, ?why, protocol = ?conn.protocol(), "closing connection: deadline passed");
            if let Some(timed_out) = &slot.timed_out {
                let reason = match why {
                    Expired::Head => "head",
                    Expired::Idle => "idle",
                    Expired::Stalled => "stalled",
                };
                timed_out.with_label_values(&[reason]).inc();
            }
        }
    }
    drop(slot);
}
