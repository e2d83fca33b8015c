//! Capture against a real PostgreSQL: exact values, change shapes, durability, logins.

mod auth;
mod changes;
mod durability;
mod tls;
mod values;
