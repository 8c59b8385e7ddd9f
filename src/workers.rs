//! The threads that serve client connections: one single-threaded tokio runtime each, as
//! nginx runs one event loop per worker. The accept loop hands each new connection to the
//! next of them in turn, and the connection lives there to the end: its requests are read,
//! forwarded and answered on one thread, with no work stealing between threads and no
//! wake-ups across cores (on the 2-core rig a bare hyper forwarder served 10-line writes at
//! 1.0–1.2x nginx this way against 0.8–0.95x on one work-stealing runtime).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's index among the serving threads, if it is one.
    static INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the serving thread this runs on, `None` on any other thread.
pub fn current() -> Option<usize> {
    INDEX.with(|index| index.get())
}

/// How long dropping [`Workers`] waits for the threads to end: what still runs on them
/// gets a second to be dropped, then each hands its held access lines over.
const STOP_WITHIN: Duration = Duration::from_secs(2);

/// The serving threads. Dropping this stops them, drops what still runs on them and waits
/// (up to [`STOP_WITHIN`]) until each has handed its held access lines to the log writer,
/// so that none are lost when the process exits right after.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped to stop the threads.
    stop: Vec<oneshot::Sender<()>>,
    /// Closed when every thread has ended (each holds a sender).
    ended: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Workers {
    /// Starts `count` (at least one) serving threads.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        let (ending, ended) = std::sync::mpsc::channel::<()>();
        for index in 0..count.max(1) {
            let ending = ending.clone();
            let (started, handle) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("serve-{index}"))
                .spawn(move || {
                    INDEX.with(|slot| slot.set(Some(index)));
                    // Access lines leave together, every 100 ms and at the end.
                    crate::log_fields::hold_lines_on_this_thread();
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = started.send(Ok(runtime.handle().clone()));
                            runtime.block_on(async {
                                tokio::select! {
                                    _ = stopped => {}
                                    _ = crate::log_fields::flush_held_periodically() => {}
                                }
                            });
                            // Connections dropped here may still log their requests.
                            runtime.shutdown_timeout(STOP_WITHIN / 2);
                            crate::log_fields::flush_held();
                        }
                        Err(e) => {
                            let _ = started.send(Err(e));
                        }
                    }
                    drop(ending);
                })?;
            let handle = handle
                .recv()
                .map_err(|_| std::io::Error::other("a serving thread ended before it started"))??;
            handles.push(handle);
            stops.push(stop);
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop: stops,
            ended: std::sync::Mutex::new(ended),
        })
    }

    /// The number of serving threads.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `serve` on the next thread in turn, with `stream` moved to that thread's
    /// runtime (an accepted socket is registered with the runtime that accepted it).
    pub fn serve<F, Fut>(&self, stream: TcpStream, peer: SocketAddr, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand a connection to a serving thread");
                return;
            }
        };
        self.handles[turn].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot take a connection on a serving thread")
                }
            }
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.clear();
        // Only the threads hold senders now: this returns when the last has ended.
        if let Ok(ended) = self.ended.get_mut() {
            let _ = ended.recv_timeout(STOP_WITHIN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_are_served_on_the_workers_in_turn() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.count(), 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut threads = vec![];
        for _ in 0..4 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            workers.serve(stream, peer, |mut stream| async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                assert_eq!(
                    current(),
                    name.strip_prefix("serve-").and_then(|i| i.parse().ok())
                );
                stream.write_all(name.as_bytes()).await.unwrap();
            });
            let mut name = String::new();
            client.read_to_string(&mut name).await.unwrap();
            threads.push(name);
        }
        assert_eq!(threads, ["serve-0", "serve-1", "serve-0", "serve-1"]);
        assert_eq!(current(), None);
    }

    #[test]
    fn dropping_the_workers_returns_once_what_ran_on_them_is_dropped() {
        // The process exits right after the drop: a connection still open on a serving
        // thread, and the access lines it logs as it goes, must be gone through by then.
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(200));
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let workers = Workers::start(2).unwrap();
        let dropped: Vec<_> = (0..2)
            .map(|i| {
                let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let held = Flag(flag.clone());
                workers.handles[i].spawn(async move {
                    let _held = held;
                    std::future::pending::<()>().await
                });
                flag
            })
            .collect();
        drop(workers);
        for flag in dropped {
            assert!(flag.load(Ordering::SeqCst));
        }
    }
}
