//! Capture against a real PostgreSQL: exact values, change shapes, durability, logins.

mod auth;
mod changes;
mod ddl;
mod durability;
mod partitions;
mod tls;
mod values;
