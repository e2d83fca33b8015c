//! Delivery: signed HTTP POSTs, at least once, in order per row, isolated per subscription.
//!
//! Stages: [`dispatcher`] (routing, per-row chains, watermark) → [`client`] (reqwest +
//! [`guard`] + [`signing`]) → outcome by [`retry`] → done, or [`queue`] (the table) served by
//! the retrier. A subscription whose endpoint cannot be reached has its [`breaker`] opened:
//! its events queue without attempts until the next probe.

pub mod breaker;
pub mod client;
pub mod dispatcher;
pub mod guard;
pub mod queue;
pub mod retry;
pub mod signing;

pub use dispatcher::{Delivery, DeliveryConfig};
