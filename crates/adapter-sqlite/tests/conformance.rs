//! The conformance suite against SQLite, each case on a fresh database file.

mod common;

cm_ports::conformance_suite!(common::backend());
