//! The `ember` command line's library side: backend selection, shared by `run`, `devices`
//! and the tests; the bench.

pub mod backends;
pub mod bench;
pub mod help;
