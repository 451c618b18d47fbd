//! A persistent pool of spinning workers for the short parallel loops of a
//! decode step (the matmuls).
//!
//! A rayon parallel region costs 13–16 µs on the 2-vCPU machines here even
//! with its workers awake, and ~70 µs once they have gone to sleep (measured:
//! an empty 8-task `for_each`); a decode step of a small model runs hundreds of
//! them, each around a matmul of tens of µs. This pool's workers spin on an
//! epoch counter between jobs (yielding now and then, parking after
//! [`SPIN`] without work), so handing out a job costs about a microsecond.
//!
//! The waits are plain loads, without the `pause` hint: on the 2-vCPU VMs
//! here a worker whose loop paused saw a new job 2.4–7 µs after it was posted
//! (SmolLM2 decode, ~30 µs jobs, four alternated runs), one that did not 1.1–2.1
//! µs; pausing only every 32nd load was as slow as every load. (The likely
//! cause is the hypervisor's pause-loop exiting, which takes a vCPU that pauses
//! in a loop for a lock waiter and may deschedule it.) The yields keep the
//! core available to other threads.
//!
//! Each thread that drives matmuls (the engine's step loop, each rank of a
//! tensor-parallel group) gets its own pool, sized like the rayon pool it runs
//! in (its threads − 1: the caller takes tasks too), started on first use and
//! stopped when that thread ends. A task that calls back in, and a worker,
//! run their tasks themselves, in order.

use std::cell::{Cell, OnceCell, UnsafeCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a worker spins for the next job before it parks.
const SPIN: Duration = Duration::from_micros(300);
/// Loads of the epoch between yields: a few µs of spinning. (65536 made the
/// worker see a job 7–10 µs late on the VMs here, against ~1 µs; 256 was alike.)
const YIELD_EVERY: u32 = 4096;

thread_local! {
    /// This thread's pool.
    static POOL: OnceCell<Handle> = const { OnceCell::new() };
    /// Set on the pool's own workers.
    static IS_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `task(i)` for every `i` in `0..tasks`, spread over this thread's pool
/// and the calling thread; returns when all have run. A panic in a task
/// panics here once every worker is done with the job.
pub fn for_each(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    if tasks <= 1 || IS_WORKER.with(Cell::get) {
        return (0..tasks).for_each(task);
    }
    POOL.with(|cell| {
        let pool = &cell
            .get_or_init(|| Handle::start(rayon::current_num_threads().saturating_sub(1)))
            .0;
        if pool.workers == 0 || pool.busy.replace(true) {
            return (0..tasks).for_each(task);
        }
        /// Frees the pool for the next job, also when a task panicked.
        struct Free<'a>(&'a Cell<bool>);
        impl Drop for Free<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _free = Free(&pool.busy);
        pool.run(tasks, task);
    });
}

/// Runs `task` over the guided shares of `0..units` (see [`guided_bounds`]),
/// spread over this thread's pool as [`for_each`] does.
pub fn for_each_share(units: usize, task: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    let bounds = guided_bounds(units);
    for_each(bounds.len() - 1, &|t| task(bounds[t]..bounds[t + 1]));
}

/// Task boundaries for splitting `units` (columns, panels, rows) over this
/// thread's pool: task `t` takes `bounds[t]..bounds[t + 1]`. Each task takes a
/// quarter of each thread's share of what is left, so the first tasks stream
/// long runs and the last are single units: the threads finish a job within
/// one unit of each other. (Equal tasks, four a thread, left the caller
/// waiting ~2 µs at the end of each ~30 µs SmolLM2 decode matmul, these ~0.6.)
/// The quantized and FP8 kernels keep equal shares: they prefetch in software
/// past the unit they read, which small tasks taken in turn by the two cores
/// waste (SmolLM2 decode measured 3–20% slower with guided shares there).
fn guided_bounds(units: usize) -> Vec<usize> {
    let threads = rayon::current_num_threads().max(1);
    let mut bounds = vec![0];
    let mut done = 0;
    while done < units {
        done += (units - done).div_ceil(4 * threads);
        bounds.push(done);
    }
    bounds
}

/// The owning thread's reference; dropping it (the thread ends) stops the workers.
struct Handle(Arc<Pool>);

impl Handle {
    fn start(workers: usize) -> Handle {
        let pool = Arc::new(Pool::new(workers));
        for w in 0..workers {
            let worker = Arc::clone(&pool);
            let spawned = std::thread::Builder::new()
                .name(format!("engine-spin-{w}"))
                .spawn(move || {
                    IS_WORKER.with(|w| w.set(true));
                    worker.work();
                });
            if spawned.is_err() {
                // Too few workers would leave a job waiting forever: run alone.
                pool.stop();
                return Handle(Arc::new(Pool::new(0)));
            }
        }
        Handle(pool)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The job a pool holds before its first.
static NO_TASK: fn(usize) = |_| {};

/// The job being run: the task function (its lifetime erased: it outlives the
/// job, since `run` waits for every worker) and the number of tasks.
#[derive(Clone, Copy)]
struct Job {
    task: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Pool {
    workers: usize,
    /// Set by the owning thread for the length of its job (a task that calls
    /// back in runs alone). Touched by the owning thread only.
    busy: Cell<bool>,
    /// Set when the owning thread ends: workers return.
    stopped: AtomicBool,
    /// Bumped once per job; a worker runs a job when it sees a new value.
    epoch: AtomicUsize,
    /// Written by the owning caller before it bumps `epoch`, read by workers
    /// after they see the bump.
    job: UnsafeCell<Job>,
    /// The next task index to hand out.
    next: AtomicUsize,
    /// Workers done with the current job (they touch it no more).
    acks: AtomicUsize,
    panicked: AtomicBool,
    /// Parking: workers that have waited longer than [`SPIN`].
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the owning thread, while every worker is
// done with the previous job (`acks`), and published by the Release/Acquire
// pair on `epoch`; the task it points to is `Sync`. `busy` is touched by the
// owning thread only.
unsafe impl Sync for Pool {}
// SAFETY: as for Sync; the raw task pointer is only dereferenced during a job.
unsafe impl Send for Pool {}

impl Pool {
    fn new(workers: usize) -> Pool {
        Pool {
            workers,
            busy: Cell::new(false),
            stopped: AtomicBool::new(false),
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(Job {
                task: &NO_TASK,
                tasks: 0,
            }),
            next: AtomicUsize::new(0),
            acks: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Tells the workers to return (a new epoch with `stopped` set).
    fn stop(&self) {
        self.stopped.store(true, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// Runs a job; the owning thread has set `busy`.
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the owning thread writes `job`, and every worker acked
        // the previous job before it returned, so no worker reads it now. The pointer outlives the job: this function waits for
        // every worker's ack before it returns.
        unsafe {
            let task: *const (dyn Fn(usize) + Sync + '_) = task;
            *self.job.get() = Job {
                task: std::mem::transmute::<
                    *const (dyn Fn(usize) + Sync + '_),
                    *const (dyn Fn(usize) + Sync + 'static),
                >(task),
                tasks,
            };
        }
        self.next.store(0, Relaxed);
        self.acks.store(0, Relaxed);
        self.panicked.store(false, Relaxed);
        self.epoch.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        self.take_tasks();
        // No `pause` in this loop or the workers' (see the module's note).
        while self.acks.load(Acquire) != self.workers {}
        if self.panicked.load(Relaxed) {
            panic!("a task of a CPU pool job panicked");
        }
    }

    /// Runs tasks of the current job until none are left.
    fn take_tasks(&self) {
        // SAFETY: the job was published before the epoch this thread saw (or,
        // for the caller, written by itself) and stays valid until every
        // worker acks.
        let job = unsafe { *self.job.get() };
        let result = catch_unwind(AssertUnwindSafe(|| loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= job.tasks {
                break;
            }
            // SAFETY: as above.
            unsafe { (*job.task)(i) };
        }));
        if result.is_err() {
            self.panicked.store(true, Relaxed);
        }
    }

    fn work(&self) {
        let mut seen = 0;
        loop {
            seen = self.wait_for_job(seen);
            if self.stopped.load(SeqCst) {
                return;
            }
            self.take_tasks();
            self.acks.fetch_add(1, Release);
        }
    }

    /// Waits until the epoch differs from `seen`; returns the new one.
    fn wait_for_job(&self, seen: usize) -> usize {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = self.epoch.load(Acquire);
            if epoch != seen {
                return epoch;
            }
            spins += 1;
            if spins.is_multiple_of(YIELD_EVERY) {
                if start.elapsed() > SPIN {
                    return self.park(seen);
                }
                // Let a thread that has work (a rayon worker) have the core.
                std::thread::yield_now();
            }
        }
    }

    fn park(&self, seen: usize) -> usize {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, SeqCst);
        loop {
            let epoch = self.epoch.load(SeqCst);
            if epoch != seen {
                self.sleepers.fetch_sub(1, SeqCst);
                return epoch;
            }
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// Every task runs exactly once, job after job, with pauses long enough
    /// for the workers to park in between.
    #[test]
    fn every_task_runs_once_per_job() {
        for (job, tasks) in [1usize, 2, 3, 8, 64, 1000]
            .into_iter()
            .cycle()
            .take(60)
            .enumerate()
        {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            super::for_each(tasks, &|i| {
                counts[i].fetch_add(1, Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Relaxed) == 1),
                "job {job}: {tasks} tasks"
            );
            if job % 20 == 19 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }

    /// The guided split covers every unit once, in order, with shrinking tasks
    /// that end in single units.
    #[test]
    fn guided_bounds_cover_units_and_shrink_to_one() {
        for units in [0usize, 1, 2, 9, 15, 48, 768, 1000] {
            let b = super::guided_bounds(units);
            assert_eq!((b[0], *b.last().unwrap()), (0, units), "{units}: {b:?}");
            let sizes: Vec<usize> = b.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(sizes.iter().all(|&s| s > 0), "{units}: {b:?}");
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{units}: {b:?}");
            assert!(sizes.last().is_none_or(|&s| s == 1), "{units}: {b:?}");
        }
    }

    /// Threads at once, each with its own pool, and a task that calls back in.
    #[test]
    fn concurrent_and_nested_callers_finish() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        super::for_each(4, &|_| {
                            super::for_each(4, &|_| {
                                total.fetch_add(1, Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 3 * 200 * 16);
    }
}
