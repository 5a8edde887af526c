//! The conformance suite against a real PostgreSQL server (`CM_TEST_POSTGRES_URL`), one fresh
//! database per case, with the LISTEN/NOTIFY notifier.

mod common;

cm_ports::conformance_suite!(common::backend());
