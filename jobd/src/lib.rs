//! `jobd`: the jobworker server. A thin layer over the `worker` library: transport (mutual
//! TLS 1.3), identity (from the client certificate), policy (who may touch which job), and
//! the gRPC handlers that tie them to the worker.

pub mod admission;
pub mod audit;
pub mod authz;
pub mod cli;
mod convert;
pub mod credentials;
pub mod identity;
pub mod metrics;
pub mod notify;
mod oversized;
pub mod paging;
pub mod pki;
pub mod revoke;
pub mod server;
pub mod service;
pub mod tls;
