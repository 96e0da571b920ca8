//! The little that the worker, jobd and jobc must do alike (hostile text made inert, the
//! namespace vocabulary, the default state dir), in a crate light enough for
//! the client to link: jobc shares these rules with the server without compiling the
//! server's process and cgroup code.

pub mod inert;
mod isolation;
mod state_dir;

pub use isolation::{Isolation, UnknownNamespace};
pub use state_dir::default_state_dir;
