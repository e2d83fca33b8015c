//! Subscriptions and watched tables: the diesel schema and store, and the routing index
//! that decides which subscriptions receive an event.

pub mod filter;
pub mod live;
pub mod routing;
pub mod schema;
pub mod store;
