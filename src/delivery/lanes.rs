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
//! tasks wait behind at most a lane's turn. A lane takes its jobs from a channel (many per
//! wake-up) and polls the running ones as one set; each still waits for its row's
//! predecessor, its subscription's slot and its endpoint on its own, so a slow endpoint
//! delays no other job (ordering and limits are the jobs' own, see [`super::job`]). A job
//! that panics is logged and dropped; its lane goes on.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Delivery;
use super::job::{Done, Job};

/// Jobs a lane takes from its channel at once.
const TAKE: usize = 256;

/// The bulk lanes of one dispatcher run.
pub(super) struct Lanes {
    delivery: Arc<Delivery>,
    lanes: Vec<mpsc::UnboundedSender<(Job, Done)>>,
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
                tasks.spawn(lane(delivery.clone(), rx));
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
        if self.lanes[self.next].send((job, done)).is_err() {
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

/// Runs the jobs sent to it until its channel is closed and every job has ended.
async fn lane(delivery: Arc<Delivery>, mut jobs: mpsc::UnboundedReceiver<(Job, Done)>) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(ended) = running.next(), if !running.is_empty() => {
                let ended: std::thread::Result<()> = ended;
                if ended.is_err() {
                    tracing::error!("a backfilled delivery job panicked; its event waits for a restart");
                }
            }
            job = jobs.recv(), if open => match job {
                Some(first) => {
                    // Whatever else has come in joins it now: one wake-up for all.
                    let more = std::iter::from_fn(|| jobs.try_recv().ok()).take(TAKE - 1);
                    for (job, done) in std::iter::once(first).chain(more) {
                        let job = delivery.clone().run_job(job, done);
                        running.push(AssertUnwindSafe(job).catch_unwind());
                    }
                }
                None => open = false,
            },
            else => break,
        }
    }
}
