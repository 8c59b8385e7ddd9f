//! One data node: its address, the requests in flight to it, and its health. A node is
//! unhealthy after 3 failed health checks in a row or 5 retriable request failures in a row,
//! and healthy again after 2 good checks in a row. Node choice picks, among healthy nodes not
//! yet tried for this request, the one with the fewest requests in flight (ties at random).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// Failed health checks in a row that make a node unhealthy.
pub const CHECKS_TO_FAIL: u32 = 3;
/// Good health checks in a row that make an unhealthy node healthy again.
pub const CHECKS_TO_RECOVER: u32 = 2;
/// Retriable request failures in a row that make a node unhealthy.
pub const FAILURES_TO_EJECT: u32 = 5;

#[derive(Debug)]
pub struct Node {
    /// `host:port`, for logs.
    pub name: String,
    /// `http://host:port[/prefix]/`.
    pub base_url: String,
    inflight: AtomicUsize,
    healthy: AtomicBool,
    check_failures: AtomicU32,
    check_successes: AtomicU32,
    request_failures: AtomicU32,
    /// Its `upstream_requests_total{code="2xx"}` and `upstream_request_duration_seconds`,
    /// looked up on first use: the label lookup is a hash and a lock on every request
    /// otherwise.
    pub(super) succeeded: std::sync::OnceLock<prometheus::IntCounter>,
    pub(super) duration: std::sync::OnceLock<prometheus::Histogram>,
}

/// A health change worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    BecameUnhealthy,
    BecameHealthy,
}

impl Node {
    pub fn new(name: String, base_url: String) -> Self {
        Self {
            name,
            base_url,
            inflight: AtomicUsize::new(0),
            // Optimistic at start: the first checks or requests tell otherwise within seconds.
            healthy: AtomicBool::new(true),
            check_failures: AtomicU32::new(0),
            check_successes: AtomicU32::new(0),
            request_failures: AtomicU32::new(0),
            succeeded: std::sync::OnceLock::new(),
            duration: std::sync::OnceLock::new(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(&self) -> InflightGuard<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self)
    }

    pub fn check_passed(&self) -> Option<Transition> {
        self.check_failures.store(0, Ordering::Relaxed);
        let successes = self.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.is_healthy() && successes >= CHECKS_TO_RECOVER {
            self.request_failures.store(0, Ordering::Relaxed);
            return self.set_healthy(true);
        }
        None
    }

    pub fn check_failed(&self) -> Option<Transition> {
        self.check_successes.store(0, Ordering::Relaxed);
        let failures = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
        (failures >= CHECKS_TO_FAIL)
            .then(|| self.set_healthy(false))
            .flatten()
    }

    /// A request got an answer that says the node works (any but a retriable failure).
    pub fn request_succeeded(&self) {
        self.request_failures.store(0, Ordering::Relaxed);
    }

    /// A request failed for a retriable reason.
    pub fn request_failed(&self) -> Option<Transition> {
        let failures = self.request_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_TO_EJECT {
            // Only checks bring it back: it must answer /ping twice before it gets writes.
            self.check_successes.store(0, Ordering::Relaxed);
            return self.set_healthy(false);
        }
        None
    }

    fn set_healthy(&self, healthy: bool) -> Option<Transition> {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        match (was, healthy) {
            (true, false) => Some(Transition::BecameUnhealthy),
            (false, true) => Some(Transition::BecameHealthy),
            _ => None,
        }
    }
}

pub struct InflightGuard<'a>(&'a Node);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks the node for the next try: healthy and untried first, then untried (a cluster with no
/// healthy node is still tried rather than refused blindly), then healthy, then any. Within
/// the first non-empty group, fewest requests in flight, ties broken at random.
pub fn pick(nodes: &[Node], tried: &[usize]) -> usize {
    let untried = |i: usize| !tried.contains(&i);
    let healthy = |i: usize| nodes[i].is_healthy();
    let groups: [&dyn Fn(usize) -> bool; 4] =
        [&|i| untried(i) && healthy(i), &untried, &healthy, &|_| true];
    let group = groups
        .into_iter()
        .find(|member| (0..nodes.len()).any(member))
        .expect("the last group holds every node");
    // One pass, each load read once (other requests change them while this one chooses),
    // keeping the least loaded so far and one of its ties, each tie with equal chance.
    let (mut chosen, mut least, mut ties) = (0, usize::MAX, 0);
    for i in (0..nodes.len()).filter(|&i| group(i)) {
        let load = nodes[i].inflight();
        if load < least {
            (chosen, least, ties) = (i, load, 1);
        } else if load == least {
            ties += 1;
            if fastrand::usize(..ties) == 0 {
                chosen = i;
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| Node::new(format!("n{i}"), String::new()))
            .collect()
    }

    #[test]
    fn three_failed_checks_eject_and_two_good_ones_restore() {
        let node = &nodes(1)[0];
        assert_eq!(node.check_failed(), None);
        assert_eq!(node.check_failed(), None);
        assert_eq!(node.check_failed(), Some(Transition::BecameUnhealthy));
        assert_eq!(node.check_failed(), None);
        assert_eq!(node.check_passed(), None);
        assert!(!node.is_healthy());
        assert_eq!(node.check_passed(), Some(Transition::BecameHealthy));
        assert!(node.is_healthy());
    }

    #[test]
    fn a_good_check_resets_the_failed_count() {
        let node = &nodes(1)[0];
        node.check_failed();
        node.check_failed();
        node.check_passed();
        node.check_failed();
        node.check_failed();
        assert!(node.is_healthy());
    }

    #[test]
    fn five_retriable_failures_in_a_row_eject_until_checks_pass() {
        let node = &nodes(1)[0];
        for _ in 0..4 {
            assert_eq!(node.request_failed(), None);
        }
        node.request_succeeded();
        for _ in 0..4 {
            assert_eq!(node.request_failed(), None);
        }
        assert_eq!(node.request_failed(), Some(Transition::BecameUnhealthy));
        assert_eq!(node.check_passed(), None);
        assert_eq!(node.check_passed(), Some(Transition::BecameHealthy));
    }

    #[test]
    fn picks_least_loaded_healthy_untried_node() {
        let nodes = nodes(3);
        let _busy = (nodes[0].start(), nodes[0].start(), nodes[1].start());
        assert_eq!(pick(&nodes, &[]), 2);
        assert_eq!(pick(&nodes, &[2]), 1);
        for _ in 0..3 {
            nodes[1].check_failed();
        }
        assert_eq!(
            pick(&nodes, &[2]),
            0,
            "unhealthy nodes come after healthy ones"
        );
        assert_eq!(
            pick(&nodes, &[0, 2]),
            1,
            "then untried unhealthy ones: fail open"
        );
        let again = pick(&nodes, &[0, 1, 2]);
        assert!(again == 0 || again == 2, "then healthy ones again");
    }

    #[test]
    fn ties_are_broken_at_random() {
        let nodes = nodes(3);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[pick(&nodes, &[])] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn pick_survives_loads_changing_while_it_chooses() {
        let nodes = std::sync::Arc::new(nodes(3));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let churn: Vec<_> = (0..3)
            .map(|t| {
                let (nodes, stop) = (nodes.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _guard = nodes[t].start();
                    }
                })
            })
            .collect();
        for _ in 0..200_000 {
            assert!(pick(&nodes, &[]) < 3);
        }
        stop.store(true, Ordering::Relaxed);
        churn.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn inflight_guard_counts_and_releases() {
        let nodes = nodes(1);
        let guard = nodes[0].start();
        assert_eq!(nodes[0].inflight(), 1);
        drop(guard);
        assert_eq!(nodes[0].inflight(), 0);
    }
}
