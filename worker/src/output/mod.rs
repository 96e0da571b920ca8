//! A job's output: captured by one writer into a framed log file, read back and
//! followed by any number of readers.

pub(crate) mod capture;
pub(crate) mod logfile;
pub(crate) mod reader;
pub(crate) mod seek;
