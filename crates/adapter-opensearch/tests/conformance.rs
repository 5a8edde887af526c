//! The conformance suite against a real OpenSearch node (`OPENSEARCH_URL`), one fresh index
//! prefix per case, with the OpenSearch notifier.

mod common;

cm_ports::conformance_suite!(common::backend());
