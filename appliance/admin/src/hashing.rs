//! Password hashing with bounded work. argon2id takes tens of megabytes
//! and tens of milliseconds per hash on purpose; run for every request, a
//! burst of wrong logins from anyone on the LAN would take gigabytes (the
//! box also runs BBB). So hashes run on a few permits, with a short queue;
//! beyond it a request is refused at once ([`Busy`], a 503 with
//! `Retry-After`) before any memory is spent.
//!
//! A permit is held by the hashing itself, not by the request: a client
//! that disconnects does not free a permit while its hash still runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// Hashes that may run at once (argon2's default uses about 19 MiB each).
pub const HASHES_AT_ONCE: usize = 2;
/// Requests that may wait for a permit; more are refused.
pub const QUEUE: usize = 8;
/// What a refused request is told to wait, in seconds.
pub const RETRY_AFTER_SECS: u64 = 2;

/// The pool was full: try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the admin page is busy checking passwords; try again in a few seconds")]
pub struct Busy;

#[derive(Debug)]
pub struct HashPool {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

impl Default for HashPool {
    fn default() -> Self {
        HashPool::new(HASHES_AT_ONCE, QUEUE)
    }
}

impl HashPool {
    pub fn new(at_once: usize, queue: usize) -> HashPool {
        HashPool {
            permits: Arc::new(Semaphore::new(at_once)),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    /// Runs `f` (a hash or a check) on the blocking pool once a permit is
    /// free; refuses at once when the queue is full.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
        // A permit free now needs no place in the queue.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(Busy);
                }
                let waited = self.permits.clone().acquire_owned().await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                waited.map_err(|_| Busy)?
            }
        };
        tokio::task::spawn_blocking(move || {
            let _held = permit;
            f()
        })
        .await
        .map_err(|_| Busy)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_permits_run_and_the_queue_is_bounded() {
        let pool = Arc::new(HashPool::new(2, 3));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                pool.run(move || {
                    let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        let mut ok = 0;
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(Busy) => busy += 1,
            }
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "never more than the permits at once");
        assert!((2..=5).contains(&ok), "the running ones and the queue: {ok}");
        assert_eq!(ok + busy, 20);
        // Free again afterwards.
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }
}
