//! Conformance: the same behaviour, checked against every transport implementation.
//! `cargo test --test conformance -- --list` shows which implementation passes what.

#![allow(unreachable_pub, missing_docs, clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
#[macro_use]
mod suite;

mod inmem;
mod quic;
