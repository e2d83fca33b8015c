//! Where jobs run: a live event's job in a task of its own; backfilled events' jobs in a
//! few long-lived *bulk lanes*.
//!
//! ```text
//! dispatcher ─▶ Lanes::run(job) ─┬─ live event: tokio::spawn(job)
//!                                └─ backfilled: bulk lane k (round robin) ─▶ its jobs,
//!                                               polled together as one task
//! ```
//!
//! A backfill keeps up to a few hundred jobs in memory. As tasks of their own they would
//! fill the runtime's run queues, and every live event — its capture, its dispatch, its
//! job — would wait behind them for a worker thread. In the lanes they take one run-queue
//! entry per lane (one lane per worker thread), whatever their number, so a live event's
//! tasks wait behind at most a lane's turn; a turn ends once it has run for [`SLICE`] (the
//! job polled then finishes its step first). A lane takes its jobs from a channel (many per
//! wake-up) and polls the running ones as one set; each still waits for its row's
//! predecessor, its subscription's slot and its endpoint on its own, so a slow endpoint
//! delays no other job (ordering and limits are the jobs' own, see [`super::job`]). A job
//! that panics is logged and dropped; its lane goes on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Delivery;
use super::job::{Done, Job};

/// Jobs a lane takes from its channel at once.
const TAKE: usize = 256;

/// How long one poll of a lane runs its jobs before it yields its worker thread.
const SLICE: Duration = Duration::from_micros(100);

/// A job as a lane runs it: [`Delivery::run_job`]'s future, on the heap.
type LaneJob = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The bulk lanes of one dispatcher run.
pub(super) struct Lanes {
    delivery: Arc<Delivery>,
    lanes: Vec<mpsc::UnboundedSender<LaneJob>>,
    next: usize,
    tasks: JoinSet<()>,
}

impl Lanes {
    /// One bulk lane per worker thread of the current runtime.
    pub(super) fn start(delivery: &Arc<Delivery>) -> Lanes {
        let n = tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .max(1);
        let mut tasks = JoinSet::new();
        let lanes = (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tasks.spawn(lane(rx));
                tx
            })
            .collect();
        Lanes {
            delivery: delivery.clone(),
            lanes,
            next: 0,
            tasks,
        }
    }

    /// Runs `job`: a live event's in a task of its own, a backfilled one's in the next
    /// bulk lane.
    pub(super) fn run(&mut self, job: Job, done: Done) {
        if job.event.backfill.is_none() {
            tokio::spawn(self.delivery.clone().run_job(job, done));
            return;
        }
        self.next = (self.next + 1) % self.lanes.len();
        let job = Box::pin(self.delivery.clone().run_job(job, done));
        if self.lanes[self.next].send(job).is_err() {
            // A lane ends only when its channel closes (below): not while the sender lives.
            tracing::error!("a bulk delivery lane is gone; a backfilled job was not run");
        }
    }

    /// Closes the lanes and waits until every job in them has ended (an attempt that
    /// outlived the hold settles its queued row first).
    pub(super) async fn finish(mut self) {
        self.lanes.clear();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Runs the jobs sent to it until its channel is closed and every job has ended. Once a poll
/// of the lane has run its jobs for [`SLICE`], it yields its worker thread, however many of
/// its jobs are ready: a live event's task queued behind it waits about that long.
async fn lane<F: Future<Output = ()>>(mut jobs: mpsc::UnboundedReceiver<F>) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    std::future::poll_fn(move |cx| {
        let started = Instant::now();
        loop {
            let mut progressed = false;
            if open {
                let mut taken = 0;
                while taken < TAKE {
                    match jobs.poll_recv(cx) {
                        Poll::Ready(Some(job)) => {
                            running.push(AssertUnwindSafe(job).catch_unwind());
                            taken += 1;
                        }
                        Poll::Ready(None) => {
                            open = false;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                progressed |= taken > 0;
            }
            match running.poll_next_unpin(cx) {
                Poll::Ready(Some(ended)) => {
                    let ended: std::thread::Result<()> = ended;
                    if ended.is_err() {
                        tracing::error!(
                            "a backfilled delivery job panicked; its event waits for a restart"
                        );
                    }
                    progressed = true;
                }
                Poll::Ready(None) if !open => return Poll::Ready(()),
                _ => {}
            }
            if !progressed {
                return Poll::Pending;
            }
            if started.elapsed() >= SLICE {
                // Woken while running, the task goes to the back of the run queue.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_that_panics_leaves_its_lane_running() {
        let (tx, rx) = mpsc::unbounded_channel::<LaneJob>();
        let lane = tokio::spawn(lane(rx));
        let (ran_tx, ran) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tx.send(Box::pin(async { panic!("a job's bug") }))
            .unwrap_or_else(|_| unreachable!());
        tx.send(Box::pin(async move {
            let _ = released.await;
            let _ = ran_tx.send(());
        }))
        .unwrap_or_else(|_| unreachable!());
        drop(tx);
        // The lane outlives its closed channel while a job still runs.
        tokio::task::yield_now().await;
        assert!(!lane.is_finished());
        let _ = release.send(());
        assert!(ran.await.is_ok(), "the job after the panicking one ran");
        assert!(
            lane.await.is_ok(),
            "the lane ended normally once its jobs had"
        );
    }

    #[tokio::test]
    async fn a_lane_of_many_ready_jobs_yields_to_other_tasks() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (tx, rx) = mpsc::unbounded_channel::<LaneJob>();
        let ended = Arc::new(AtomicUsize::new(0));
        for _ in 0..1000 {
            let ended = ended.clone();
            tx.send(Box::pin(async move {
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(50) {}
                ended.fetch_add(1, Ordering::Relaxed);
            }))
            .unwrap_or_else(|_| unreachable!());
        }
        drop(tx);
        // One thread: the probe runs only when the lane yields it.
        let lane = tokio::spawn(lane(rx));
        let seen = ended.clone();
        let probe = tokio::spawn(async move { seen.load(Ordering::Relaxed) });
        let before_probe = probe.await.unwrap_or(usize::MAX);
        assert!(
            before_probe < 100,
            "the lane ran {before_probe} of its 1,000 ready jobs before another task"
        );
        assert!(lane.await.is_ok());
        assert_eq!(ended.load(Ordering::Relaxed), 1000);
    }
}
