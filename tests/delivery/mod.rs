//! End to end through `walhook run`: real PostgreSQL, real HTTP receivers on 127.0.0.1.

mod crash;
mod demo;
mod egress;
mod hold;
mod hostile;
mod outcomes;
mod retention;
mod shutdown;
mod ssrf;
