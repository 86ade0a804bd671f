//! `palisade proxy`: the sidecar built from the library's layers (feature
//! `proxy`).

mod admin;
mod answer;
pub mod check;
pub mod config;
mod conns;
mod idle;
mod inbound;
mod listen;
mod pool;
mod reload;
mod routes;
pub mod server;
mod upstream;
