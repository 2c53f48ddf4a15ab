//! Files uploaded on the sources page (an Apple Health `export.zip`, Health
//! Auto Export JSON, a mapped CSV) and a new push token from a button: what
//! `nof1d import` and `nof1d push-token` do, for people without a shell.
//!
//! An upload is streamed to a file in the data folder (never held in
//! memory: exports are gigabytes). Up to 64 MiB it is imported at once on a
//! connection of its own, like the inbox's, then deleted, and the page shows
//! what was stored, already present and refused; a larger one is moved into
//! the participant's inbox folder for the sources job.

use std::path::PathBuf;

use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use tokio::io::AsyncWriteExt;

use crate::service::app::AppState;
use crate::service::sources::ingest::{IngestReport, hae_source, import_file, new_push_token};
use crate::service::store::ParticipantRow;

use super::{Viewer, csrf_refused, internal, nav};

/// Deletes an upload's folder when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The largest upload accepted (a large Apple Health export).
pub const MAX_UPLOAD_BYTES: usize = 8 << 30;

/// Uploads up to this size are imported while the page waits; larger ones
/// go to the participant's inbox folder, which the sources job imports in
/// the background (an import of gigabytes outlasts any request time-out).
const IMPORT_AT_ONCE_BYTES: u64 = 64 << 20;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(viewer: &Viewer, status: StatusCode, title: &str, body: String) -> Response {
    let html = format!(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{} — nof1d</title><link rel=stylesheet href=/style.css><body>{}<main><h1>{}</h1>{body}<p><a href=\"/sources\">Back to the sources</a></p></main></body></html>",
        escape(title),
        nav(viewer),
        escape(title)
    );
    (status, Html(html)).into_response()
}

/// A file name kept to letters, digits, `.`, `-` and `_` (a mapping matches
/// files by name, so the name is kept as far as it is safe).
fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "upload".into()
    } else {
        cleaned
    }
}

/// The participant named in the form, or the only one that is not the demo.
async fn participant(state: &AppState, key: Option<&str>) -> Result<ParticipantRow, String> {
    let people = state
        .db
        .read(|s| s.participants())
        .await
        .map_err(|e| e.to_string())?;
    match key.filter(|k| !k.is_empty()) {
        Some(k) => people
            .into_iter()
            .find(|p| p.key == k)
            .ok_or_else(|| format!("no participant {k:?}")),
        None => {
            let real: Vec<ParticipantRow> = people.iter().filter(|p| !p.is_demo).cloned().collect();
            match real.as_slice() {
                [one] => Ok(one.clone()),
                [] => people
                    .into_iter()
                    .next()
                    .ok_or_else(|| "no participants yet".to_string()),
                _ => Err("several participants: choose one".into()),
            }
        }
    }
}

/// POST `/sources/upload` (multipart: `csrf` first, then `participant`
/// and `file`): imports the file at once and shows the report.
#[utoipa::path(post, path = "/sources/upload", tag = "forms",
    summary = "Import an uploaded file (multipart: csrf first, then participant and file): up to 64 MiB at once, larger files through the participant's inbox",
    request_body(content_type = "multipart/form-data", description = "csrf, participant, file"),
    responses((status = 200), (status = 202), (status = 400), (status = 403), (status = 422)))]
pub(super) async fn upload(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    mut form: Multipart,
) -> Response {
    // The CSRF token comes first, so nothing is written (or buffered past
    // a token's length) for a forged form.
    match form.next_field().await {
        Ok(Some(mut field)) if field.name() == Some("csrf") => {
            let mut token = Vec::new();
            while let Ok(Some(chunk)) = field.chunk().await {
                token.extend_from_slice(&chunk);
                if token.len() > 256 {
                    return csrf_refused();
                }
            }
            if !viewer.csrf_ok(std::str::from_utf8(&token).ok()) {
                return csrf_refused();
            }
        }
        _ => return csrf_refused(),
    }
    let folder = state.config.data_dir.join("uploads");
    if let Err(e) = tokio::fs::create_dir_all(&folder).await {
        return internal(&format!("cannot make {}: {e}", folder.display()));
    }
    let mut key: Option<String> = None;
    let mut saved: Option<(PathBuf, String, u64)> = None;
    // Removes the upload's folder however the request ends (a client gone
    // mid-upload drops this handler before any line below runs).
    let mut cleanup: Vec<Cleanup> = Vec::new();
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return page(
                    &viewer,
                    StatusCode::BAD_REQUEST,
                    "Upload failed",
                    format!(
                        "<p class=err>The upload did not arrive whole: {}</p>",
                        escape(&e.to_string())
                    ),
                );
            }
        };
        match field.name() {
            Some("participant") => key = field.text().await.ok(),
            Some("file") => {
                let name = safe_name(field.file_name().unwrap_or("upload"));
                let mut random = [0u8; 8];
                if getrandom::fill(&mut random).is_err() {
                    return internal("cannot draw random bytes");
                }
                let tag: String = random.iter().map(|b| format!("{b:02x}")).collect();
                // The import sees the person's file name (mappings match it)
                // in a folder of its own.
                let dir = folder.join(tag);
                if let Err(e) = tokio::fs::create_dir_all(&dir).await {
                    return internal(&e.to_string());
                }
                cleanup.push(Cleanup(dir.clone()));
                let path = dir.join(&name);
                let mut file = match tokio::fs::File::create(&path).await {
                    Ok(f) => f,
                    Err(e) => return internal(&format!("cannot write {}: {e}", path.display())),
                };
                let mut bytes = 0u64;
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            bytes += chunk.len() as u64;
                            if let Err(e) = file.write_all(&chunk).await {
                                let _ = tokio::fs::remove_dir_all(&dir).await;
                                return internal(&format!("cannot write the upload: {e}"));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tokio::fs::remove_dir_all(&dir).await;
                            return page(
                                &viewer,
                                StatusCode::BAD_REQUEST,
                                "Upload failed",
                                format!(
                                    "<p class=err>The upload did not arrive whole: {}</p>",
                                    escape(&e.to_string())
                                ),
                            );
                        }
                    }
                }
                if let Err(e) = file.flush().await {
                    return internal(&e.to_string());
                }
                saved = Some((path, name, bytes));
            }
            _ => {}
        }
    }
    let Some((path, name, bytes)) = saved else {
        return page(
            &viewer,
            StatusCode::BAD_REQUEST,
            "Nothing uploaded",
            "<p class=err>Choose a file first.</p>".into(),
        );
    };
    let who = match participant(&state, key.as_deref()).await {
        Ok(p) => p,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(path.parent().unwrap_or(&path)).await;
            return page(
                &viewer,
                StatusCode::BAD_REQUEST,
                "Upload not imported",
                format!("<p class=err>{}</p>", escape(&e)),
            );
        }
    };
    if bytes > IMPORT_AT_ONCE_BYTES {
        let inbox =
            crate::service::sources::inbox::inbox_dir(&state.config.data_dir).join(&who.key);
        let tag = path
            .parent()
            .and_then(|d| d.file_name())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A name taken already gets the tag before its extension, so the
        // mapping that matches the name still matches it.
        let target = if inbox.join(&name).exists() {
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name.as_str(), ""));
            inbox.join(format!("{stem}-{tag}.{ext}"))
        } else {
            inbox.join(&name)
        };
        let moved = match tokio::fs::create_dir_all(&inbox).await {
            Ok(()) => tokio::fs::rename(&path, &target).await,
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_dir_all(path.parent().unwrap_or(&path)).await;
        return match moved {
            Ok(()) => page(
                &viewer,
                StatusCode::ACCEPTED,
                "Received",
                format!(
                    "<p class=ok>{} ({bytes} bytes) is in the inbox of {}: the sources job imports it within a few minutes, and its result appears in the run log on the sources page (and in <code>inbox/{}/done/</code>).</p>",
                    escape(&name),
                    escape(&who.key),
                    escape(&who.key)
                ),
            ),
            Err(e) => internal(&format!(
                "cannot move the upload to {}: {e}",
                target.display()
            )),
        };
    }
    let config = state.config.clone();
    let now = state.clock.now();
    let file = path.clone();
    let imported = tokio::task::spawn_blocking(move || -> Result<IngestReport, String> {
        let key = config.database.resolve_key().map_err(|e| e.to_string())?;
        let mut store =
            crate::service::store::Store::open_keyed(&config.database_path(), key.as_ref())
                .map_err(|e| e.to_string())?;
        import_file(
            &mut store,
            &who,
            &config.import_settings(&who.key),
            &file,
            None,
            now,
        )
        .map_err(|e| e.to_string())
    })
    .await;
    let _ = tokio::fs::remove_dir_all(path.parent().unwrap_or(&path)).await;
    match imported {
        Ok(Ok(report)) => {
            let problems: String = report
                .problems
                .iter()
                .map(|p| format!("<li>{}</li>", escape(p)))
                .collect();
            page(
                &viewer,
                if report.damaged.is_some() {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::OK
                },
                "Imported",
                format!(
                    "<p class=ok>{} ({} bytes)</p>{}",
                    escape(&report.summary()),
                    bytes,
                    if problems.is_empty() {
                        String::new()
                    } else {
                        format!("<ul>{problems}</ul>")
                    }
                ),
            )
        }
        Ok(Err(e)) => page(
            &viewer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not imported",
            format!(
                "<p class=err>{}: {}</p><p>Nothing from this file was stored.</p>",
                escape(&name),
                escape(&e)
            ),
        ),
        Err(e) => internal(&e.to_string()),
    }
}

/// The push-token form.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(super) struct TokenForm {
    csrf: Option<String>,
    participant: Option<String>,
}

/// POST `/sources/push-token`: a new token for the participant's Health
/// Auto Export source, shown this once (the earlier one stops working).
#[utoipa::path(post, path = "/sources/push-token", tag = "forms",
    summary = "A new push token for the participant's Health Auto Export source, shown once",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, content_type = "text/html", body = String), (status = 403)))]
pub(super) async fn push_token(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Form(form): axum::extract::Form<TokenForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    let who = match participant(&state, form.participant.as_deref()).await {
        Ok(p) => p,
        Err(e) => {
            return page(
                &viewer,
                StatusCode::BAD_REQUEST,
                "No token made",
                format!("<p class=err>{}</p>", escape(&e)),
            );
        }
    };
    let now = state.clock.now();
    let made = state
        .db
        .write_with(move |s| {
            let source = hae_source(s, &who, now)?;
            new_push_token(s, source.id).map(|t| (t, who.key.clone()))
        })
        .await;
    match made {
        Ok((token, key)) => page(
            &viewer,
            StatusCode::OK,
            "New push token",
            format!(
                "<p>For {}. Copy it now: it is shown this once, and the earlier token no longer works.</p><p><code>{}</code></p><p>In Health Auto Export: Automations → REST API, URL <code>{}{}</code>, format JSON, header <code>Authorization: Bearer &lt;the token&gt;</code>.</p>",
                escape(&key),
                escape(&token),
                escape(&state.public_url),
                super::PUSH_PATH
            ),
        ),
        Err(e) => internal(&e.to_string()),
    }
}
