//! Threads that wait for work by spinning for a short while before they sleep.
//!
//! A decoded token is ~120 small matrix products (30-60 µs each on SmolLM2's shapes). Rayon's
//! workers fall asleep between them and take tens of microseconds to wake: measured on the
//! 1536 x 576 product, two rayon threads took 67 µs where one thread alone took 42 µs. So the
//! products split their rows over these workers instead, which spin (with `spin_loop` hints)
//! for about a millisecond after each job before parking, the way llama.cpp's thread pool
//! waits; the caller's thread works too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_millis(1);

/// One call's parts, shared with the workers that join it.
struct Job {
    /// The caller's closure, its lifetime erased: [`Pool::run`] returns only after every
    /// claimed part has finished, and a part index past `parts` is never run.
    work: *const (dyn Fn(usize) + Sync),
    parts: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `work` points to a `Sync` closure that outlives every use (see `Job::work`).
unsafe impl Send for Job {}
// SAFETY: as above; the other fields are atomics.
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs parts until none is left.
    fn help(&self) {
        loop {
            let part = self.next.fetch_add(1, Ordering::Relaxed);
            if part >= self.parts {
                return;
            }
            // SAFETY: the part was claimed below `parts`, so `run` is still waiting for it
            // and the closure is alive.
            let work = unsafe { &*self.work };
            if catch_unwind(AssertUnwindSafe(|| work(part))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    /// The newest job and its sequence number.
    job: Mutex<(u64, Option<Arc<Job>>)>,
    /// Sequence number of the newest job, readable without the lock.
    seq: AtomicUsize,
    wake: Condvar,
}

/// A fixed set of worker threads (see the module docs).
pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
}

impl Pool {
    /// The process's pool: as many threads, the caller's included, as rayon's global pool
    /// has (a backend sets that from its config's `threads`).
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(rayon::current_num_threads().max(1)))
    }

    /// A pool of `threads` threads in all: the caller's and `threads - 1` workers.
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            job: Mutex::new((0, None)),
            seq: AtomicUsize::new(0),
            wake: Condvar::new(),
        });
        let workers = threads.saturating_sub(1);
        for i in 0..workers {
            let shared = shared.clone();
            // A worker that cannot start leaves its share to the others.
            let _ = std::thread::Builder::new()
                .name(format!("ember-kernels-{i}"))
                .spawn(move || worker(&shared));
        }
        Pool { shared, workers }
    }

    /// Threads that run a job's parts, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `work(0..parts)` across the pool and returns when all have run.
    ///
    /// # Panics
    /// When a part panicked (after every part has finished).
    pub fn run(&self, parts: usize, work: &(dyn Fn(usize) + Sync)) {
        if self.workers == 0 || parts <= 1 {
            (0..parts).for_each(work);
            return;
        }
        // SAFETY (of the lifetime erasure): this function returns only once `done ==
        // parts`, i.e. after the last use of `work`.
        let work: *const (dyn Fn(usize) + Sync + '_) = work;
        let job = Arc::new(Job {
            work: unsafe {
                std::mem::transmute::<
                    *const (dyn Fn(usize) + Sync + '_),
                    *const (dyn Fn(usize) + Sync + 'static),
                >(work)
            },
            parts,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        {
            let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            slot.0 += 1;
            slot.1 = Some(job.clone());
            self.shared.seq.store(slot.0 as usize, Ordering::Release);
        }
        self.shared.wake.notify_all();
        job.help();
        while job.done.load(Ordering::Acquire) < parts {
            std::hint::spin_loop();
        }
        // Drop the pool's reference so that the erased pointer does not outlive this call.
        let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if slot.1.as_ref().is_some_and(|j| Arc::ptr_eq(j, &job)) {
            slot.1 = None;
        }
        drop(slot);
        assert!(
            !job.panicked.load(Ordering::Relaxed),
            "a part of a parallel kernel panicked"
        );
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0usize;
    loop {
        // Spin until a newer job is posted, then park.
        let start = Instant::now();
        while shared.seq.load(Ordering::Acquire) == seen && start.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
        let job = {
            let mut slot = shared.job.lock().unwrap_or_else(|e| e.into_inner());
            while slot.0 as usize == seen {
                slot = shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
            seen = slot.0 as usize;
            slot.1.clone()
        };
        if let Some(job) = job {
            job.help();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once() {
        let pool = Pool::new(3);
        for parts in [0, 1, 2, 7, 100] {
            let counts: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            pool.run(parts, &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn callers_on_several_threads_each_get_their_parts_run() {
        let pool = Pool::new(2);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let pool = &pool;
                scope.spawn(move || {
                    for round in 0..200 {
                        let parts = 1 + (t + round) % 9;
                        let sum = AtomicUsize::new(0);
                        pool.run(parts, &|i| {
                            sum.fetch_add(i + 1, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), parts * (parts + 1) / 2);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_part_is_reported_after_the_others() {
        let pool = Pool::new(2);
        let ran = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert!(i != 3, "part 3");
            })
        }));
        assert!(result.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 8);
        // The pool still works.
        let after = AtomicUsize::new(0);
        pool.run(4, &|_| {
            after.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(after.load(Ordering::Relaxed), 4);
    }
}
