//! Delivery: signed HTTP POSTs, at least once, in order per row, isolated per subscription.
//!
//! Stages: [`dispatcher`] (routing, per-row chains, watermark) → [`client`] (reqwest +
//! [`guard`] + [`signing`]) → outcome by [`retry`] → done, or [`queue`] (the table) served by
//! the retrier.

pub mod client;
pub mod dispatcher;
pub mod guard;
pub mod queue;
pub mod retry;
pub mod signing;

pub use dispatcher::{Delivery, DeliveryConfig};
