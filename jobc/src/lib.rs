//! `jobc`: the jobworker command-line client. The binary is thin: argument parsing lives in
//! [`args`], the connection in [`client`], and turning replies into text in [`output`].

pub mod args;
pub mod client;
pub mod contexts;
pub mod environment;
pub mod errors;
pub mod follow;
pub mod listing;
pub mod output;
mod render;
pub mod run;
