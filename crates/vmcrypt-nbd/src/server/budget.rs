//! The server-wide budget of bytes held by in-flight requests: a WRITE's payload from
//! the moment it is read, a READ's reply until it has been written to the socket.
//!
//! Every request takes its share from two semaphores before its buffer is allocated:
//! its connection's (so one client cannot take the whole budget) and the server's
//! (so many clients together cannot exceed it). When either is used up the connection
//! stops reading requests until replies have been written (backpressure). A request
//! never waits for more than the whole budget, so a single request bigger than the
//! budget still runs (alone). [`Inflight`] exposes the bytes held, for logs and tests.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default server-wide budget (`vmcrypt serve --max-inflight`).
pub const DEFAULT_MAX_INFLIGHT: u32 = 64 << 20;

/// Most bytes one connection may hold at once (further capped at half the budget).
const PER_CONNECTION: u32 = 96 << 20;

/// Bytes held by in-flight requests, shared by the server and its connections.
#[derive(Clone, Debug)]
pub struct Inflight(Arc<Gauge>);

#[derive(Debug)]
struct Gauge {
    sem: Arc<Semaphore>,
    total: u32,
    used: AtomicU64,
    peak: AtomicU64,
}

impl Inflight {
    /// A budget of `total` bytes (at least 1).
    pub(crate) fn new(total: u32) -> Self {
        let total = total.max(1);
        Inflight(Arc::new(Gauge {
            sem: Arc::new(Semaphore::new(total as usize)),
            total,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }))
    }

    /// The budget in bytes.
    pub fn total(&self) -> u32 {
        self.0.total
    }

    /// Bytes held by in-flight requests right now.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::SeqCst)
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> u64 {
        self.0.peak.load(Ordering::SeqCst)
    }

    /// A per-connection budget under this server-wide one.
    pub(crate) fn connection(&self) -> ConnBudget {
        let cap = PER_CONNECTION.min((self.0.total / 2).max(1));
        ConnBudget {
            sem: Arc::new(Semaphore::new(cap as usize)),
            cap,
            server: self.clone(),
        }
    }
}

/// One connection's share of the budget.
pub(crate) struct ConnBudget {
    sem: Arc<Semaphore>,
    cap: u32,
    server: Inflight,
}

impl ConnBudget {
    /// Wait until `bytes` (capped at this connection's share) are free in both budgets.
    pub(crate) async fn acquire(&self, bytes: u32) -> Held {
        let n = bytes.clamp(1, self.cap);
        // Neither semaphore is ever closed, so acquiring cannot fail.
        let local = self.sem.clone().acquire_many_owned(n).await.ok();
        let global = self.server.0.sem.clone().acquire_many_owned(n).await.ok();
        self.held(n, local, global)
    }

    /// `bytes` (capped as by [`Self::acquire`]) if both budgets have them free now.
    pub(crate) fn try_acquire(&self, bytes: u32) -> Option<Held> {
        let n = bytes.clamp(1, self.cap);
        let local = self.sem.clone().try_acquire_many_owned(n).ok()?;
        let global = self.server.0.sem.clone().try_acquire_many_owned(n).ok()?;
        Some(self.held(n, Some(local), Some(global)))
    }

    fn held(
        &self,
        n: u32,
        local: Option<OwnedSemaphorePermit>,
        global: Option<OwnedSemaphorePermit>,
    ) -> Held {
        let g = &self.server.0;
        let used = g.used.fetch_add(u64::from(n), Ordering::SeqCst) + u64::from(n);
        g.peak.fetch_max(used, Ordering::SeqCst);
        Held {
            _permits: (local, global),
            n,
            server: self.server.clone(),
        }
    }
}

/// Bytes held by one request; given back when dropped (after its reply is written).
pub(crate) struct Held {
    _permits: (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>),
    n: u32,
    server: Inflight,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.server
            .0
            .used
            .fetch_sub(u64::from(self.n), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_bigger_than_the_budget_are_capped_and_counted() {
        let b = Inflight::new(1000);
        let c = b.connection();
        let h = c.acquire(u32::MAX).await;
        assert_eq!(b.used(), 500);
        let h2 = b.connection().acquire(0).await;
        assert_eq!(b.used(), 501);
        drop((h, h2));
        assert_eq!((b.used(), b.peak()), (0, 501));
    }

    #[tokio::test]
    async fn try_acquire_takes_only_what_both_budgets_have_free() {
        let b = Inflight::new(1000);
        let (c1, c2) = (b.connection(), b.connection());
        let h1 = c1.try_acquire(400).expect("free budget");
        // c1's own share (500) has 100 left.
        assert!(c1.try_acquire(200).is_none());
        let h2 = c2.try_acquire(500).expect("c2's share is untouched");
        // c2's share is used up, and so is all but 100 of the server's.
        assert!(c2.try_acquire(1).is_none());
        assert!(c1.try_acquire(101).is_none());
        assert_eq!(b.used(), 900);
        let h3 = c1.try_acquire(100).expect("the last 100 bytes");
        assert_eq!(b.used(), 1000);
        drop((h1, h2, h3));
        assert_eq!(b.used(), 0);
        assert!(c2.try_acquire(500).is_some());
    }
}
