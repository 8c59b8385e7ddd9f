//! Active health checks: every `health_check_interval`, `GET /ping` on each node of a
//! cluster with a short timeout. Node state changes are logged. The task holds only a weak
//! reference, so it ends when its cluster is dropped (on shutdown, or when a reload replaces it).

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::USER_AGENT;
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};

use super::node::{Node, Transition};
use super::Cluster;
use crate::body::Chunks;

/// Longest wait for a `/ping` answer (also bounded by the interval and the cluster timeout).
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn spawn(cluster: &Arc<Cluster>) {
    let interval = cluster.health_check_interval;
    tokio::spawn(run(Arc::downgrade(cluster), interval, ping));
}

/// Probes every node each `interval` with `probe(cluster, node index, timeout)`.
async fn run<P, F>(cluster: Weak<Cluster>, interval: Duration, probe: P)
where
    P: Fn(Arc<Cluster>, usize, Duration) -> F,
    F: Future<Output = Result<(), String>>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        cluster.writes.reap();
        let nodes = cluster.nodes.load_full();
        let timeout = interval.min(cluster.timeout).min(MAX_CHECK_TIMEOUT);
        let probes = (0..nodes.len()).map(|i| probe(cluster.clone(), i, timeout));
        let results = futures_util::future::join_all(probes).await;
        for (node, result) in nodes.iter().zip(results) {
            record(&cluster, node, result);
        }
    }
}

/// `GET /ping`: any 2xx within `timeout` passes.
async fn ping(cluster: Arc<Cluster>, index: usize, timeout: Duration) -> Result<(), String> {
    let uri = cluster
        .writes
        .uri(index, "ping", "")
        .map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(USER_AGENT, super::OWN_USER_AGENT)
        .body(Chunks::default())
        .expect("ping request is valid");
    let answer = async {
        let (response, lease) = cluster.writes.send(index, request).await?;
        let status = response.status();
        // A ping's answer is empty; a connection whose answer is not goes unused again.
        if Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .is_ok()
        {
            lease.release();
        }
        Ok::<_, crate::error::BoxError>(status)
    };
    match tokio::time::timeout(timeout, answer).await {
        Err(_) => Err("timed out".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(status)) if status.is_success() => Ok(()),
        Ok(Ok(status)) => Err(format!("status {status}")),
    }
}

fn record(cluster: &Cluster, node: &Node, result: Result<(), String>) {
    let transition = match &result {
        Ok(()) => node.check_passed(),
        Err(_) => node.check_failed(),
    };
    match (transition, result) {
        (Some(Transition::BecameUnhealthy), Err(why)) => {
            tracing::warn!(cluster = %cluster.name, node = %node.name, why, "node unhealthy: 3 failed health checks");
        }
        (Some(Transition::BecameHealthy), _) => {
            tracing::info!(cluster = %cluster.name, node = %node.name, "node healthy again");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn health_follows_the_check_interval_three_to_fail_two_to_recover() {
        let config = crate::Config::parse(
            "[clusters.default]\nnodes = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]\n\
             health_check_interval = \"5s\"\n",
            &|_| None,
        )
        .unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let cluster = Arc::new(Cluster::new(&config.clusters[0], &metrics));
        let first_fails = Arc::new(AtomicBool::new(true));
        let flag = first_fails.clone();
        let probe = move |_: Arc<Cluster>, index: usize, _: Duration| {
            let fail = index == 0 && flag.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err("down".to_string())
                } else {
                    Ok(())
                }
            }
        };
        tokio::spawn(run(Arc::downgrade(&cluster), Duration::from_secs(5), probe));
        let nodes = cluster.nodes.load_full();
        let at = |secs: u64| {
            tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(secs))
        };

        at(14).await; // checks at 5 s and 10 s failed
        assert!(nodes[0].is_healthy(), "two failed checks are not enough");
        at(2).await; // the third, at 15 s
        assert!(!nodes[0].is_healthy());
        assert!(nodes[1].is_healthy());
        assert!(
            cluster.is_healthy(),
            "one healthy node keeps the cluster healthy"
        );

        first_fails.store(false, Ordering::SeqCst);
        at(5).await; // one good check at 20 s
        assert!(!nodes[0].is_healthy());
        at(5).await; // the second, at 25 s
        assert!(nodes[0].is_healthy());

        drop(cluster);
        at(10).await; // the task ends with its cluster; nothing to assert but no panic
    }
}
