//! The REST hooks API over real HTTP against a running daemon.

mod auth;
mod delivery;
mod health;
mod hooks;
mod isolation;
mod limits;
mod openapi;
mod starvation;
