//! Active health checks: every `health_check_interval`, `GET /ping` on each node of a
//! cluster with a short timeout. Node state changes are logged. The task holds only a weak
//! reference, so it ends when its cluster is dropped (on shutdown or, later, reload).

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Method, Request};

use super::node::{Node, Transition};
use super::Cluster;
use crate::body::Chunks;

/// Longest wait for a `/ping` answer (also bounded by the interval and the cluster timeout).
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn spawn(cluster: &Arc<Cluster>) {
    let weak = Arc::downgrade(cluster);
    let interval = cluster.health_check_interval;
    tokio::spawn(run(weak, interval));
}

async fn run(cluster: Weak<Cluster>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let nodes = cluster.nodes.load_full();
        let timeout = interval.min(cluster.timeout).min(MAX_CHECK_TIMEOUT);
        let checks = nodes.iter().map(|node| check(&cluster, node, timeout));
        futures_util::future::join_all(checks).await;
    }
}

async fn check(cluster: &Cluster, node: &Node, timeout: Duration) {
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("{}ping", node.base_url))
        .header(
            "user-agent",
            concat!("influx-write-proxy/", env!("CARGO_PKG_VERSION")),
        )
        .body(Chunks::default())
        .expect("ping request is valid");
    let answer = tokio::time::timeout(timeout, cluster.client.request(request)).await;
    let passed = matches!(&answer, Ok(Ok(response)) if response.status().is_success());
    let transition = if passed {
        node.check_passed()
    } else {
        node.check_failed()
    };
    match transition {
        Some(Transition::BecameUnhealthy) => {
            let why = match answer {
                Err(_) => "timed out".to_string(),
                Ok(Err(e)) => format!("{e}"),
                Ok(Ok(response)) => format!("status {}", response.status()),
            };
            tracing::warn!(cluster = %cluster.name, node = %node.name, why, "node unhealthy: 3 failed health checks");
        }
        Some(Transition::BecameHealthy) => {
            tracing::info!(cluster = %cluster.name, node = %node.name, "node healthy again");
        }
        None => {}
    }
}
