//! The `ember` command line's library side: backend selection, shared by `run`, `devices`
//! and the tests; the bench; `transcribe`.

pub mod backends;
pub mod bench;
pub mod help;
pub mod transcribe;
