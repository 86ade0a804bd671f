//! `palisade proxy`: the sidecar built from the library's layers (feature
//! `proxy`).

pub mod check;
pub mod config;
mod routes;
pub mod server;
