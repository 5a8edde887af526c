//! The stylesheet and the script, embedded in the binary: the console needs no other origin
//! and works on an air-gapped network.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

/// The path of the stylesheet, with a version so that a new binary's is fetched afresh.
pub(crate) const CSS_PATH: &str =
    concat!("/console/assets/console.css?v=", env!("CARGO_PKG_VERSION"));
pub(crate) const JS_PATH: &str =
    concat!("/console/assets/console.js?v=", env!("CARGO_PKG_VERSION"));

pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}
