//! walhook's integration tests: one binary, one disposable PostgreSQL, one database per test.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod api;
mod backfill;
mod batch;
mod capture;
mod console;
mod delivery;
mod ops;
mod payload;
mod security;
mod standby;
mod subscriptions;
mod support;
mod trigger;
