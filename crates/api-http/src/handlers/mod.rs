//! The route handlers: each turns a request into one use-case call and its answer into JSON.
//! They hold no rules of their own; request bodies are validated by [`crate::dto`].

pub(crate) mod agents;
pub(crate) mod commands;
pub(crate) mod consumers;
pub(crate) mod delivery;
pub(crate) mod ops;
pub(crate) mod orders;
pub(crate) mod requests;

use cm_domain::FieldError;

use crate::extract::Params;

/// The default and the largest `size` of a listing page.
const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = cm_ports::MAX_PAGE_SIZE as u64;

/// The `size` parameter of a listing: 1 to [`MAX_PAGE_SIZE`], [`DEFAULT_PAGE_SIZE`] when absent.
pub(crate) fn page_size(q: &Params) -> Result<usize, FieldError> {
    let size = q
        .int("size", 1, MAX_PAGE_SIZE)?
        .unwrap_or(DEFAULT_PAGE_SIZE);
    Ok(usize::try_from(size).unwrap_or(usize::MAX))
}
