//! Password hashing with bounded work. argon2id takes tens of megabytes
//! and tens of milliseconds per hash on purpose; run for every request, a
//! burst of wrong logins from anyone on the LAN would take gigabytes (the
//! box also runs BBB). So hashes run on a few threads of their own, with a
//! short queue; beyond it a request is refused at once ([`Busy`], a 503
//! with `Retry-After`) before any memory is spent.
//!
//! Dedicated threads, not the runtime's blocking pool: the allocator keeps
//! an argon2 block in the arena of each thread that ever hashed, and the
//! blocking pool may use a new thread for each call. With a fixed few, the
//! memory argon2 holds is bounded by their number.
//!
//! A hash runs to its end even if the request that wanted it went away, and
//! holds its thread meanwhile.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

/// Hashes that may run at once (argon2's default uses about 19 MiB each).
pub const HASHES_AT_ONCE: usize = 2;
/// Requests that may wait for a hashing thread; more are refused.
pub const QUEUE: usize = 8;
/// What a refused request is told to wait, in seconds.
pub const RETRY_AFTER_SECS: u64 = 2;

/// The pool was full: try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the admin page is busy checking passwords; try again in a few seconds")]
pub struct Busy;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
pub struct HashPool {
    jobs: SyncSender<Job>,
}

impl Default for HashPool {
    fn default() -> Self {
        HashPool::new(HASHES_AT_ONCE, QUEUE)
    }
}

impl HashPool {
    /// `threads` hashing threads and room for `queue` waiting jobs. The
    /// threads end when the pool is dropped.
    pub fn new(threads: usize, queue: usize) -> HashPool {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || work(&rx));
            if let Err(e) = spawned {
                log::error!("cannot start a password hashing thread: {e}");
            }
        }
        HashPool { jobs }
    }

    /// Runs `f` (a hash or a check) on a hashing thread; refuses at once
    /// when the queue is full.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => rx.await.map_err(|_| Busy),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(g) => g.recv(),
            Err(p) => p.into_inner().recv(),
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_threads_run_and_the_queue_is_bounded() {
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
        assert_eq!(most.load(Ordering::SeqCst), 2, "never more than the threads at once");
        assert!((2..=5).contains(&ok), "the running ones and the queue: {ok}");
        assert_eq!(ok + busy, 20);
        // Free again afterwards.
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }
}
