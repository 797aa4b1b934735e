//! The `ember` command line's library side: backend selection, shared by `run`, `devices`
//! and the tests.

pub mod backends;
