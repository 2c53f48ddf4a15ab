//! The pages one-click email links land on: a GET shows a one-button
//! form, a POST records the answer once (see `crate::service::links`).

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use jiff::tz::TimeZone;

use crate::service::app::AppState;
use crate::trial::calendar::local_date;
use crate::trial::protocol::Protocol;

use super::internal;

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>{{ heading }}</h1>
{% for p in paragraphs %}<p>{{ p }}</p>{% endfor %}
{% if let Some(action) = form_action %}
<form method="post" action="{{ action }}">
{% if side_effect %}<p><label><input type="checkbox" name="stop" value="1"> This is serious: stop the trial now (recorded as an adverse event).</label></p>{% endif %}
<button type="submit" class="primary">{{ button }}</button>
</form>
<p class="muted">Nothing is recorded until you press the button.</p>
{% endif %}"#
)]
struct LinkPage<'a> {
    heading: &'a str,
    paragraphs: Vec<String>,
    form_action: Option<String>,
    button: String,
    side_effect: bool,
}

fn link_response(code: StatusCode, page: LinkPage<'_>) -> Response {
    let title = format!("{} — nof1d", page.heading);
    match super::render_page(&title, "narrow", "", &page) {
        Ok(html) => (code, Html(html)).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

fn link_refused(e: &crate::service::links::LinkError) -> Response {
    let code = match e {
        crate::service::links::LinkError::Expired(_) => StatusCode::GONE,
        _ => StatusCode::BAD_REQUEST,
    };
    link_response(
        code,
        LinkPage {
            heading: "This link cannot be used",
            paragraphs: vec![e.to_string()],
            form_action: None,
            button: String::new(),
            side_effect: false,
        },
    )
}

/// The trial's title and the participant's zone for a claim, checked
/// against the store (the trial exists and belongs to the participant).
async fn link_context(
    state: &AppState,
    claim: &crate::service::links::LinkClaim,
) -> Result<(crate::service::store::TrialRow, Protocol, TimeZone), String> {
    let (trial_id, participant_id) = (claim.trial_id, claim.participant_id);
    let (trial, participant) = state
        .db
        .read(move |s| Ok((s.trial(trial_id)?, s.participant(participant_id)?)))
        .await
        .map_err(|e| e.to_string())?;
    let (Some(trial), Some(participant)) = (trial, participant) else {
        return Err("this link's trial no longer exists".into());
    };
    if trial.participant_id != participant_id {
        return Err("this link belongs to another participant".into());
    }
    let protocol = trial.protocol().map_err(|e| e.to_string())?;
    let tz = TimeZone::get(&participant.time_zone).map_err(|e| e.to_string())?;
    Ok((trial, protocol, tz))
}

/// GET: shows what the link would record and a one-button form; changes nothing.
#[utoipa::path(get, path = "/l/{token}", tag = "forms",
    summary = "Where an email link lands: a one-button confirmation form",
    params(("token" = String, Path, description = "the signed link")),
    responses((status = 200, content_type = "text/html", body = String), (status = 400), (status = 410)))]
pub(super) async fn link_page(
    State(state): State<AppState>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    let claim = match state.link_key.verify(&token, state.clock.now()) {
        Ok(c) => c,
        Err(e) => return link_refused(&e),
    };
    let (_, protocol, _) = match link_context(&state, &claim).await {
        Ok(x) => x,
        Err(e) => {
            return link_response(
                StatusCode::NOT_FOUND,
                LinkPage {
                    heading: "This link cannot be used",
                    paragraphs: vec![e],
                    form_action: None,
                    button: String::new(),
                    side_effect: false,
                },
            );
        }
    };
    let words = claim.action.words();
    link_response(
        StatusCode::OK,
        LinkPage {
            heading: "Please confirm",
            paragraphs: vec![
                format!(
                    "{} — {}",
                    protocol.title,
                    claim.date.strftime("%A %-d %B %Y")
                ),
                format!("{words}."),
            ],
            form_action: Some(format!("/l/{token}")),
            button: format!("Confirm: {words}"),
            side_effect: claim.action == crate::service::links::LinkAction::SideEffect,
        },
    )
}

/// The confirmation form.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct LinkForm {
    stop: Option<String>,
}

/// POST: records what the link says, once.
#[utoipa::path(post, path = "/l/{token}", tag = "forms",
    summary = "Records what the link says, once",
    params(("token" = String, Path, description = "the signed link")),
    request_body(content = LinkForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, content_type = "text/html", body = String), (status = 400), (status = 410), (status = 422)))]
pub(super) async fn link_submit(
    State(state): State<AppState>,
    axum::extract::Path(token): axum::extract::Path<String>,
    axum::extract::Form(form): axum::extract::Form<LinkForm>,
) -> Response {
    use crate::service::links::LinkAction;
    use crate::service::store::{LinkOutcome, LinkUse, LinkWhat};
    let now = state.clock.now();
    let claim = match state.link_key.verify(&token, now) {
        Ok(c) => c,
        Err(e) => return link_refused(&e),
    };
    let refused = |msg: String| {
        link_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            LinkPage {
                heading: "Nothing was recorded",
                paragraphs: vec![msg],
                form_action: None,
                button: String::new(),
                side_effect: false,
            },
        )
    };
    let (trial, protocol, tz) = match link_context(&state, &claim).await {
        Ok(x) => x,
        Err(e) => return refused(e),
    };
    let fingerprint = crate::service::links::fingerprint(&token);
    let action_code = claim.action.code();
    let outcome_stream = protocol.outcome.stream.clone();
    let unit = protocol.outcome.unit.clone();
    let value = match claim.action {
        LinkAction::Rate(v) => {
            let Some(sr) = protocol.outcome.self_report.as_ref() else {
                return refused("this trial's outcome is not a self-report".into());
            };
            if v < sr.min || v > sr.max {
                return refused(format!("a rating must be {} to {}", sr.min, sr.max));
            }
            Some(f64::from(v))
        }
        _ => None,
    };
    // A rating given on its day counts now; one given later counts at 21:00
    // of the day it rates, so it stays on that day.
    let observed_at = if local_date(now, &tz) == claim.date {
        now
    } else {
        crate::trial::calendar::local_instant(claim.date, jiff::civil::time(21, 0, 0, 0), &tz)
    };
    let (pid, trial_id, date) = (claim.participant_id, trial.id, claim.date);
    let stop_today = (claim.action == LinkAction::SideEffect && form.stop.as_deref() == Some("1"))
        .then(|| local_date(now, &tz));
    let adherence_code = match claim.action {
        LinkAction::Done => "done",
        LinkAction::NotDone => "not_done",
        LinkAction::SideEffect => "side_effect",
        LinkAction::Rate(_) => "",
    };
    let result = state
        .db
        .write(move |s| {
            let what = match value {
                Some(value) => {
                    let source_id =
                        s.ensure_source(pid, "self-report", "self_report", "{}", now)?;
                    LinkWhat::Rating {
                        stream: &outcome_stream,
                        unit: &unit,
                        value,
                        observed_at,
                        source_id,
                    }
                }
                None => LinkWhat::Adherence(adherence_code),
            };
            s.apply_link(
                &LinkUse {
                    fingerprint: &fingerprint,
                    participant_id: pid,
                    trial_id,
                    date,
                    action: &action_code,
                    what,
                    stop_today,
                },
                now,
            )
        })
        .await;
    let first_use = matches!(result, Ok(LinkOutcome::Recorded(_)));
    let mut paragraphs = match result {
        Ok(LinkOutcome::Recorded(what)) => vec![format!("Thank you: {what}.")],
        Ok(LinkOutcome::AlreadyUsed { outcome, at }) => {
            vec![format!(
                "This link was already used ({outcome}, at {at}); nothing changed."
            )]
        }
        Ok(LinkOutcome::AlreadyRated { value }) => {
            vec![format!(
                "{} already has a rating ({value}); it stands and nothing changed.",
                date
            )]
        }
        Err(e) => return refused(e.to_string()),
    };
    if first_use && stop_today.is_some() {
        paragraphs.push(
            "The trial is stopped. Please talk to your clinician about the side effect.".into(),
        );
    }
    link_response(
        StatusCode::OK,
        LinkPage {
            heading: "Recorded",
            paragraphs,
            form_action: None,
            button: String::new(),
            side_effect: false,
        },
    )
}
