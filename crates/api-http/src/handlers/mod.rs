//! The route handlers: each turns a request into one use-case call and its answer into JSON.
//! They hold no rules of their own; request bodies are validated by [`crate::dto`].

pub(crate) mod agents;
pub(crate) mod commands;
pub(crate) mod delivery;
pub(crate) mod ops;
pub(crate) mod orders;
pub(crate) mod requests;

/// The default and the largest `size` of a listing page.
pub(crate) const DEFAULT_PAGE_SIZE: u64 = 100;
pub(crate) const MAX_PAGE_SIZE: u64 = cm_ports::MAX_PAGE_SIZE as u64;
