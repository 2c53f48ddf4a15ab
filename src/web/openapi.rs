//! `/api/openapi.json`: the OpenAPI 3.1 document of the JSON API and the
//! forms, kept beside the code (`openapi.json`) and checked against the
//! real responses by `tests/dashboard.rs`.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as shipped.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// GET `/api/openapi.json`.
pub(super) async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}
