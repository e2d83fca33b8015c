//! The acknowledgement watermark: which captured transactions are finished.
//!
//! Transactions enter in commit order (`begin`, jobs counted against the newest, `commit`).
//! A transaction is finished when it committed and every job of it is done — delivered or
//! durably queued. The longest finished prefix is acknowledged, so the slot never passes a
//! transaction that still has an event only in memory.

use std::collections::VecDeque;

use crate::capture::Acknowledger;
use crate::change::{CommitTime, Settled};
use crate::lsn::Lsn;

/// Where a transaction stands.
enum TxEnd {
    Open,
    Committed(Lsn, CommitTime),
    /// Cut off by a reconnect; the server sends it again.
    Abandoned,
}

struct TxEntry {
    id: u64,
    end: TxEnd,
    outstanding: usize,
    /// Set when this transaction and every one before it are finished.
    settled: Vec<Settled>,
}

/// Transactions in flight, oldest first, and the acknowledger they advance.
pub(super) struct Watermark {
    txs: VecDeque<TxEntry>,
    next: u64,
    ack: Acknowledger,
}

impl Watermark {
    /// An empty watermark advancing `ack`.
    pub(super) fn new(ack: Acknowledger) -> Watermark {
        Watermark {
            txs: VecDeque::new(),
            next: 0,
            ack,
        }
    }

    /// A transaction begins; an open one before it was cut off (a reconnect).
    pub(super) fn begin(&mut self) {
        if let Some(last) = self.txs.back_mut().filter(|t| matches!(t.end, TxEnd::Open)) {
            last.end = TxEnd::Abandoned;
        }
        self.txs.push_back(TxEntry {
            id: self.next,
            end: TxEnd::Open,
            outstanding: 0,
            settled: Vec::new(),
        });
        self.next += 1;
    }

    /// Counts one more job against the newest transaction; its id, for [`Self::done`].
    pub(super) fn add_job(&mut self) -> Option<u64> {
        let entry = self.txs.back_mut()?;
        entry.outstanding += 1;
        Some(entry.id)
    }

    /// A job of transaction `id` is done.
    pub(super) fn done(&mut self, id: u64) {
        let front = self.txs.front().map_or(0, |t| t.id);
        if let Some(entry) = self.txs.get_mut((id - front) as usize) {
            entry.outstanding -= 1;
        }
        self.advance();
    }

    /// The newest transaction committed at `end_lsn`.
    pub(super) fn commit(&mut self, end_lsn: Lsn, commit_time: CommitTime) {
        if let Some(entry) = self.txs.back_mut() {
            entry.end = TxEnd::Committed(end_lsn, commit_time);
        }
        self.advance();
    }

    /// `settled` is set once every transaction so far is finished (at once if they are).
    pub(super) fn settle(&mut self, settled: Settled) {
        match self.txs.back_mut() {
            Some(newest) => newest.settled.push(settled),
            None => settled.set(),
        }
    }

    /// Whether a transaction has begun and not committed yet.
    pub(super) fn in_transaction(&self) -> bool {
        self.txs
            .back()
            .is_some_and(|t| matches!(t.end, TxEnd::Open))
    }

    /// Acknowledges the longest finished prefix.
    pub(super) fn advance(&mut self) {
        while let Some(front) = self.txs.front() {
            match front.end {
                TxEnd::Committed(lsn, time) if front.outstanding == 0 => {
                    self.ack.acknowledge_commit(lsn, time)
                }
                TxEnd::Abandoned if front.outstanding == 0 => {}
                _ => return,
            }
            if let Some(finished) = self.txs.pop_front() {
                finished.settled.iter().for_each(Settled::set);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledges_only_finished_prefixes() {
        let ack = Acknowledger::default();
        let mut w = Watermark::new(ack.clone());
        w.begin();
        let a = w.add_job().expect("open transaction");
        w.commit(Lsn(10), CommitTime(10));
        w.begin();
        w.commit(Lsn(20), CommitTime(20));
        assert_eq!(
            ack.acknowledged(),
            Lsn(0),
            "first transaction still has a job"
        );
        w.done(a);
        assert_eq!(ack.acknowledged(), Lsn(20));
        let none_open = Settled::default();
        w.settle(none_open.clone());
        assert!(none_open.is_set(), "nothing unfinished before it");
        w.begin();
        let b = w.add_job().expect("open transaction");
        w.commit(Lsn(25), CommitTime(25));
        let after_b = Settled::default();
        w.settle(after_b.clone());
        assert!(
            !after_b.is_set(),
            "set only once the transaction before it is finished"
        );
        w.done(b);
        assert!(after_b.is_set());
        w.begin();
        assert!(w.in_transaction());
        w.begin(); // reconnect: the open one is abandoned and sent again
        w.commit(Lsn(30), CommitTime(30));
        assert_eq!(ack.acknowledged(), Lsn(30));
        assert!(!w.in_transaction());
    }
}
