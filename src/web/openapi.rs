//! `/api/openapi.json`: the OpenAPI 3.1 document of the JSON API and the
//! forms, generated (utoipa) from the handlers' `#[utoipa::path]`
//! attributes and the types they answer with, so that it cannot drift from
//! them; `tests/dashboard.rs` checks it against the real responses.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The API's version: its major part changes with every change a script
/// would notice (1: unkeyed arrays in `/api/status`; 2: keyed objects and
/// this generated document).
pub const API_VERSION: &str = "2.0.0";

/// The major part of [`API_VERSION`], as `/api/status` says it.
pub const API_MAJOR: u32 = 2;

/// What the document says about access, first.
const DESCRIPTION: &str = "JSON beside every dashboard page. Open on loopback when no credential is configured; otherwise send `Authorization: Bearer <web.token>` (investigator view) or the session cookie from POST /login. The participant view hides future schedule days and, in blinded trials, shows arm codes only. Forms take the page's `csrf` field.";

#[derive(OpenApi)]
#[openapi(
    info(title = "nof1d dashboard API", description = "see DESCRIPTION"),
    paths(
        super::status::status_json,
        super::trial::trial_json,
        super::trial::trial_export,
        super::proposals::proposals_json,
        super::hypotheses::hypotheses_json,
        super::sources::streams_json,
        super::sources::sources_json,
        document,
        super::status::healthz,
        super::status::metrics,
        super::access::login_submit,
        super::access::logout,
        super::trial::confirm_action,
        super::trial::trial_action,
        super::trial::report_submit,
        super::proposals::edit_proposal,
        super::proposals::retry_design,
        super::hypotheses::hypotheses_action,
        super::sources::sources_poll,
        super::oauth::connect,
        super::upload::upload,
        super::upload::push_token,
        super::oauth::callback,
        super::push::push,
        super::link::link_page,
        super::link::link_submit,
    )
)]
struct ApiDoc;

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = API_VERSION.to_string();
        doc.info.description = Some(DESCRIPTION.to_string());
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("nof1d_session"))),
        );
        doc.to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"the document did not serialise: {e}\"}}"))
    })
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    summary = "This document, generated from the handlers and their types",
    responses((status = 200, content_type = "application/json", body = Object)))]
/// GET `/api/openapi.json`.
pub(super) async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves is in the document, each JSON
    /// answer's schema is there, and the document is OpenAPI 3.1.
    #[test]
    fn the_document_covers_the_routes_with_their_types() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], API_VERSION);
        assert!(API_VERSION.starts_with(&format!("{API_MAJOR}.")));
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/status",
            "/api/trials/{id}",
            "/api/proposals",
            "/api/hypotheses",
            "/api/streams",
            "/api/sources",
            "/healthz",
            "/trials/{id}/{action}",
            "/proposals/{id}/edit",
            "/push",
            "/l/{token}",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "StatusView",
            "TrialDetail",
            "CalendarDay",
            "ProposalView",
            "DesignRates",
            "RedesignLine",
            "Health",
            "ReportForm",
        ] {
            assert!(schemas.contains_key(name), "{name} missing");
        }
        // A field added to a view is in its schema without touching the
        // document: the calendar's run-in flag, the proposals' redesigns.
        assert!(schemas["CalendarDay"]["properties"]["run_in"].is_object());
        assert!(schemas["DesignRates"]["properties"]["redesigns"].is_object());
        assert!(schemas["Health"]["properties"]["delivery"].is_object());
        // Skipped fields stay out.
        assert!(
            schemas["CalendarDay"]["properties"]
                .get("arm_index")
                .is_none()
        );
    }
}
