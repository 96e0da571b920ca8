//! The little that the worker, jobd and jobc must do alike (hostile text made inert, the
//! namespace and signal vocabularies, environment rules, the default state dir), in a crate light enough for
//! the client to link: jobc shares these rules with the server without compiling the
//! server's process and cgroup code.

pub mod env;
pub mod inert;
mod isolation;
mod signal;
mod state_dir;

pub use isolation::{Isolation, UnknownNamespace};
pub use signal::{parse_signal, signal_name, UnknownSignal};
pub use state_dir::default_state_dir;
