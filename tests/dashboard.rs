//! The dashboard against the real daemon on loopback: login with a session
//! cookie and its rate limit, CSRF refusals, the participant/investigator
//! split, proposals (causal graph, simulated design, edit, approve), pause,
//! the self-report form, the JSON API and its OpenAPI document.

use crate::common;

use std::time::{Duration, Instant};

use common::{Daemon, Session, csrf_of, hash, login, no_redirects, post_login, run, session};

const PARTICIPANT_PASSWORD: &str = "evening calm 42";
const INVESTIGATOR_PASSWORD: &str = "key keeper 1729";

fn start(dir: &std::path::Path) -> Daemon {
    let data = dir.join("data");
    let config = common::write_config(
        &data,
        &format!(
            "[web]\npassword_hash = {:?}\ninvestigator_password_hash = {:?}\n[jobs]\ndesign_seconds = 1\ndesign_trials = 12\ncalibration_trials = 8\n[clock]\nstart = {:?}\n",
            hash(PARTICIPANT_PASSWORD),
            hash(INVESTIGATOR_PASSWORD),
            common::PINNED_START
        ),
    );
    let d = Daemon::start(&data, &["--demo", "--config", config.to_str().unwrap()]);
    d.wait_jobs(1, Duration::from_secs(30));
    d
}

/// Proposes `protocol` for the demo participant from the command line.
fn propose(data: &std::path::Path, protocol: &str) {
    let out = run(
        &[
            "trial",
            "propose",
            protocol,
            "--participant",
            "demo",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        data,
    );
    assert!(out.status.success(), "{out:?}");
}

/// The daemon with the shipped protocol `name` proposed for the demo
/// participant, its data folder and the participant's session.
fn start_with_proposal(dir: &std::path::Path, name: &str) -> (Daemon, std::path::PathBuf, Session) {
    let d = start(dir);
    let data = dir.join("data");
    propose(
        &data,
        &format!("{}/protocols/{name}.toml", env!("CARGO_MANIFEST_DIR")),
    );
    let me = session(&d, PARTICIPANT_PASSWORD);
    (d, data, me)
}

#[test]
fn login_roles_and_concealment() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    // No session: pages send the browser to the login, the API says 401.
    let r = no_redirects().get(d.url("/trials/1")).send().unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login?next=/trials/1");
    assert_eq!(d.get("/api/trials/1").0, 401);
    // A login form without its token is refused and sets nothing.
    let r = no_redirects()
        .post(d.url("/login"))
        .form(&[("csrf", "forged"), ("password", PARTICIPANT_PASSWORD)])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    // A forged or altered cookie is no session.
    let forged = Session {
        cookie: "nof1d_session=v1.i.99999999999.00.AAAA".into(),
    };
    assert_eq!(forged.get(&d, "/api/trials/1").0, 401);

    let participant = session(&d, PARTICIPANT_PASSWORD);
    let investigator = session(&d, INVESTIGATOR_PASSWORD);
    let mine = participant.json(&d, "/api/trials/1");
    let theirs = investigator.json(&d, "/api/trials/1");
    assert_eq!(mine["view"], "participant");
    assert_eq!(theirs["view"], "investigator");
    let calendar = |v: &serde_json::Value| v["calendar"].as_array().unwrap().clone();
    let future: Vec<_> = calendar(&mine)
        .into_iter()
        .filter(|c| c["future"] == true)
        .collect();
    assert!(!future.is_empty(), "the demo trial has days to come");
    assert!(
        future.iter().all(|c| c["arm"].is_null()),
        "the participant sees no future arm"
    );
    assert!(
        calendar(&theirs)
            .iter()
            .filter(|c| c["future"] == true)
            .all(|c| c["arm"].is_string()),
        "the investigator sees the schedule to come"
    );
    // The page too: the participant's shows grey squares with no arm.
    let (status, page) = participant.get(&d, "/trials/1");
    assert_eq!(status, 200);
    assert!(page.contains("grey days are still to come"));
    assert!(page.contains("participant view"), "signed-in marker");
    // The days' CSV too: the participant's ends today, the
    // investigator's lists the whole schedule.
    assert!(page.contains("/trials/1/export/days.csv"), "{page}");
    let rows = |who: &common::Session| {
        let (status, csv) = who.get(&d, "/trials/1/export/days.csv");
        assert_eq!(status, 200, "{csv}");
        assert!(csv.starts_with("date,day,period,block,arm,"), "{csv}");
        csv.lines().count() - 1
    };
    let past = calendar(&mine).len() - future.len();
    assert_eq!(rows(&participant), past);
    assert_eq!(rows(&investigator), calendar(&theirs).len());
    let (status, _) = participant.get(&d, "/trials/1/export/secrets.csv");
    assert_eq!(status, 404);
    // Sign out ends the session in the browser.
    let (status, _) = participant.post(&d, "/logout", &format!("csrf={}", csrf_of(&page)));
    assert_eq!(status, 303);
}

#[test]
fn failed_logins_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    for attempt in 0..5 {
        let (status, cookie) = login(&d, "not the password");
        assert_eq!(status, 401, "attempt {attempt}");
        assert!(cookie.is_none());
    }
    // The sixth try is refused before the password is even checked, the
    // right password included, with a Retry-After.
    let r = post_login(&d, PARTICIPANT_PASSWORD);
    assert_eq!(r.status().as_u16(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 15 * 60, "{wait}");
    assert!(r.headers().get("set-cookie").is_none());
    assert!(d.log().contains("failed dashboard login"));
    assert!(!d.log().contains(PARTICIPANT_PASSWORD));
}

#[test]
fn a_running_calibration_shows_its_progress_on_the_proposal_and_a_page_that_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _, me) = start_with_proposal(dir.path(), "study-timing");
    // The demo trial starts at once on its stated thresholds, so the designs
    // job calibrates this design next: while it runs, the proposal carries
    // its progress.
    let deadline = Instant::now() + Duration::from_secs(300);
    let running = loop {
        let p = me.json(&d, "/api/proposals")[0].clone();
        assert_eq!(p["id"], 2);
        if p["calibration_progress"]["done"]
            .as_u64()
            .is_some_and(|n| n > 0)
        {
            break p;
        }
        assert!(
            p["calibration"].is_null(),
            "calibrated before any reading was seen: {p}"
        );
        assert!(Instant::now() < deadline, "no progress seen: {p}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let g = &running["calibration_progress"];
    let (done, planned) = (g["done"].as_u64().unwrap(), g["planned"].as_u64().unwrap());
    // At `calibration_trials = 8`: 11 scenarios, the 29 trials under the
    // effect each on which futility's 10% can hold at all, and the 59 null
    // trials on which 5% can in each of the 9 distinct ones (no extension
    // past 59, no fresh check): the plan is whole from the start.
    assert_eq!(planned, 11 * 29 + 9 * 59, "{g}");
    assert!(done > 0, "{g}");
    assert!(
        g["stage"].as_str().unwrap().starts_with("study-timing ("),
        "{g}"
    );
    assert!(g["elapsed_s"].as_f64().unwrap() >= 0.0, "{g}");
    assert!(g["remaining_s"].as_f64().is_some(), "{g}");
    // The page that follows it reloads itself while it runs.
    let (status, page) = me.get(&d, "/proposals/2/progress");
    assert_eq!(status, 200);
    // It may have ended between the two requests: then it is done.
    let running = page.contains("Calibration of its stopping rule:</strong> running.");
    let ended = page.contains("Calibration of its stopping rule:</strong> done");
    assert!(running || ended, "{page}");
    if running {
        assert!(
            page.contains(r#"<meta http-equiv="refresh" content="5">"#)
                && page.contains(r#"<progress max="850" value=""#)
                && page.contains("virtual trials planned so far"),
            "{page}"
        );
    }
    // Once calibrated: the result, no progress, no reloading.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let p = me.json(&d, "/api/proposals")[0].clone();
        if !p["calibration"].is_null() {
            assert!(p["calibration_progress"].is_null(), "{p}");
            break;
        }
        assert!(Instant::now() < deadline, "not calibrated: {p}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let page = loop {
        let (_, page) = me.get(&d, "/proposals/2/progress");
        if page.contains("Simulation of its error rates and power:</strong> done") {
            break page;
        }
        assert!(Instant::now() < deadline, "not simulated: {page}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        page.contains("Calibration of its stopping rule:</strong> done")
            && !page.contains("http-equiv=\"refresh\""),
        "{page}"
    );
    // An unknown trial is not found; the started demo trial's design waits
    // for nothing (it is past its proposal and its start), so its page
    // does not reload itself.
    assert_eq!(me.get(&d, "/proposals/99/progress").0, 404);
    let (_, demo) = me.get(&d, "/proposals/1/progress");
    assert!(
        demo.contains("Simulation of its error rates and power:</strong> not done")
            && !demo.contains("waiting its turn")
            && !demo.contains("http-equiv=\"refresh\""),
        "{demo}"
    );
}

#[test]
fn a_design_given_up_on_is_calibrated_and_simulated_again_from_the_proposals_page() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let data = dir.path().join("data");
    // Twenty fewer migraine days a month cannot happen from the simulated
    // baseline of 7.5: every calibration attempt fails the same way.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocols/magnesium-migraine.toml"
    ))
    .unwrap()
    .replace("mid_natural = 2.0", "mid_natural = 20.0");
    let protocol = dir.path().join("migraine-20.toml");
    std::fs::write(&protocol, text).unwrap();
    propose(&data, protocol.to_str().unwrap());
    let me = session(&d, PARTICIPANT_PASSWORD);
    // Its simulation fails the same way, and is given up on too.
    let given_up = |me: &Session| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let p = me.json(&d, "/api/proposals")[0].clone();
            if p["calibration_failure"][1] == true && p["simulation_failure"][1] == true {
                break p;
            }
            assert!(Instant::now() < deadline, "not given up on: {p}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let p = given_up(&me);
    assert_eq!(p["id"], 2);
    for work in ["calibration_failure", "simulation_failure"] {
        let why = p[work][0].as_str().unwrap();
        assert!(
            why.contains("attempt 3 of 3") && why.contains("mid_natural"),
            "{p}"
        );
    }
    // Given up on, the design no longer fails the designs job at every tick.
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.json("/healthz")["jobs"]["designs"]["failing"] != false {
        assert!(Instant::now() < deadline, "{}", d.json("/healthz"));
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, page) = me.get(&d, "/proposals");
    assert!(
        page.contains(">Try the calibration again</button>")
            && page.contains(">Try the simulation again</button>"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let retry = "/proposals/2/calibration/retry";
    assert_eq!(me.post(&d, retry, "csrf=forged").0, 403);
    let hash = nof1d::trial::protocol::ProtocolHash(p["protocol_hash"].as_str().unwrap().into());
    let failure = || {
        nof1d::service::store::Store::open_read_only(&data.join("nof1d.sqlite"))
            .unwrap()
            .design_failure(nof1d::service::store::DesignWork::Calibration, &hash)
            .unwrap()
    };
    let before = failure().unwrap();
    assert_eq!(me.post(&d, retry, &format!("csrf={csrf}")).0, 303);
    // The designs job tries it again, three times, and gives up again: the
    // failure is a new one (a retry that forgot nothing would leave the
    // old one, given up on, in place).
    given_up(&me);
    let after = failure().unwrap();
    assert_eq!(after.attempts, 3);
    assert!(after.last_at > before.last_at, "{before:?} -> {after:?}");
    let retried = common::count(
        &data,
        "SELECT COUNT(*) FROM audit_log WHERE action = 'calibration.retried' AND trial_id = 2",
    );
    assert_eq!(retried, 1);
    // Only a proposal's calibration can be tried again.
    let (status, body) = me.post(
        &d,
        "/proposals/1/calibration/retry",
        &format!("csrf={csrf}"),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("only a proposal's"), "{body}");
    let (status, _) = me.post(
        &d,
        "/proposals/9/calibration/retry",
        &format!("csrf={csrf}"),
    );
    assert_eq!(status, 404);
    let (status, _) = me.post(&d, "/proposals/2/nothing/retry", &format!("csrf={csrf}"));
    assert_eq!(status, 404);
    // The simulation is tried again on its own: three new attempts, one
    // audit entry.
    let simulation = || {
        nof1d::service::store::Store::open_read_only(&data.join("nof1d.sqlite"))
            .unwrap()
            .design_failure(nof1d::service::store::DesignWork::Simulation, &hash)
            .unwrap()
            .unwrap()
    };
    let before = simulation();
    assert_eq!(before.attempts, 3);
    let retry = "/proposals/2/simulation/retry";
    assert_eq!(me.post(&d, retry, &format!("csrf={csrf}")).0, 303);
    let (status, body) = me.post(&d, retry, &format!("csrf={csrf}"));
    assert_eq!(
        status, 409,
        "tried again before it was given up on again: {body}"
    );
    given_up(&me);
    let after = simulation();
    assert_eq!(after.attempts, 3);
    assert!(after.last_at > before.last_at, "{before:?} -> {after:?}");
    let retried = common::count(
        &data,
        "SELECT COUNT(*) FROM audit_log WHERE action = 'simulation.retried' AND trial_id = 2",
    );
    assert_eq!(retried, 1);
}

#[test]
fn proposals_pause_self_report_and_api() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data, me) = start_with_proposal(dir.path(), "study-timing");

    // The overview lists the proposal; its page shows the hypothesis, the
    // drawn causal graph and, once the background job is done, the design's
    // simulated error rates.
    let (_, overview) = me.get(&d, "/");
    assert!(overview.contains("Proposals waiting for you"));
    assert!(
        overview.contains("Studying early in the morning"),
        "{overview}"
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    let proposal = loop {
        let list = me.json(&d, "/api/proposals");
        let p = list[0].clone();
        if !p["simulated"].is_null() && !p["calibration"].is_null() {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "design not simulated and calibrated: {p}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(proposal["id"], 2);
    assert!(
        proposal["rationale"]
            .as_str()
            .unwrap()
            .contains("Alertness")
    );
    assert!(
        proposal["graph"].as_str().unwrap().contains(
            "hours slept would affect late_night / early_morning, but randomisation cuts that"
        ),
        "{proposal}"
    );
    assert_eq!(proposal["simulated"]["trials"], 12);
    // The simulation is stored under the hash of the proposal's text, and
    // says so itself (it once hashed the protocol's id instead).
    let hash = proposal["protocol_hash"].as_str().unwrap();
    let stored = nof1d::service::store::Store::open_read_only(&data.join("nof1d.sqlite"))
        .unwrap()
        .design_simulation(&nof1d::trial::protocol::ProtocolHash(hash.to_string()))
        .unwrap()
        .expect("the simulation is stored under the protocol text's hash");
    let report: serde_json::Value = serde_json::from_str(&stored.report_json).unwrap();
    assert_eq!(report["protocol_hash"], hash);
    let rate = proposal["simulated"]["false_stop"][0].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate));
    let (status, page) = me.get(&d, "/proposals");
    assert_eq!(status, 200);
    assert!(page.contains("Causal graph"));
    assert!(
        page.contains("stroke-dasharray"),
        "cut arrows are drawn dashed"
    );
    assert!(page.contains("hours slept"), "confounders are drawn");
    assert!(page.contains("False stop for efficacy"));
    // Power at twice the MID too; below 50% the changes that raise it are
    // simulated, named in the warning, and each can be taken in one click.
    let double = &proposal["simulated"]["double"];
    let power = double[1][0].as_f64().expect("power at twice the MID");
    eprintln!(
        "power at twice the MID: {double}; redesigns {}",
        proposal["simulated"]["redesigns"]
    );
    assert!(page.contains("Finds an effect twice the MID ("), "{page}");
    let redesigns = proposal["simulated"]["redesigns"].as_array().unwrap();
    // Not the seed's luck: this design finds twice its MID in 15% of 400
    // virtual trials (`nof1d simulate`), so a seed drawn at random would
    // see 6 or more of 12 find it (and fail this) about 0.5% of the time.
    assert!(power < 0.5, "12 virtual trials of this design: {double}");
    assert_eq!(redesigns.len(), 2, "{redesigns:?}");
    assert!(
        page.contains("Changes simulated to raise the power at twice the MID"),
        "{page}"
    );
    assert_eq!(
        page.matches(">Use this design</button>").count(),
        2,
        "{page}"
    );
    // The threshold calibrated on the stress suite, every scenario with the
    // betting test beside it.
    let calibration = &proposal["calibration"];
    let efficacy = calibration["efficacy"].as_f64().unwrap();
    assert!(efficacy > 0.5, "{calibration}");
    assert!(
        calibration["scenarios"].as_array().unwrap().len() == 11,
        "{calibration}"
    );
    assert!(
        page.contains("the threshold calibrated for this design"),
        "{page}"
    );
    assert!(page.contains(&format!("{efficacy:.4}")), "{page}");
    assert!(page.contains("heavy tails") && page.contains("Betting test"));
    // Futility: 8 calibration trials would leave 2 under the effect a
    // scenario, too few for its 10% target at 95% confidence; every
    // calibration runs the 29 it takes, so futility is calibrated too.
    let futility = &calibration["futility"];
    assert!(futility["threshold"].as_f64().is_some(), "{calibration}");
    assert!(
        page.contains("Stops for futility when P(better by MID) ≤")
            && !page.contains("not calibrated"),
        "{page}"
    );
    assert!(page.contains("Given up though it works"), "{page}");
    let csrf = csrf_of(&page);

    // Edit: a new protocol hash, recorded; then approve from the page.
    let hash_before = proposal["protocol_hash"].as_str().unwrap().to_string();
    let (status, _) = me.post(
        &d,
        "/proposals/2/edit",
        "csrf=forged&period_days=7&max_blocks=4&mid=6",
    );
    assert_eq!(status, 403);
    let (status, _) = me.post(
        &d,
        "/proposals/2/edit",
        &format!("csrf={csrf}&period_days=7&max_blocks=4&mid=6"),
    );
    assert_eq!(status, 303);
    let edited = me.json(&d, "/api/proposals");
    assert_ne!(edited[0]["protocol_hash"], hash_before.as_str());
    assert_eq!(edited[0]["period_days"], 7);
    // An edit from a page shown before that one (another tab) does not
    // silently undo it.
    let (status, body) = me.post(
        &d,
        "/proposals/2/edit",
        &format!("csrf={csrf}&protocol_hash={hash_before}&period_days=14&max_blocks=4&mid=6"),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("changed after this page was shown"), "{body}");
    assert_eq!(me.json(&d, "/api/proposals")[0]["period_days"], 7);
    let (status, body) = me.post(
        &d,
        "/proposals/2/edit",
        &format!("csrf={csrf}&period_days=0&max_blocks=4&mid=6"),
    );
    assert_eq!(status, 422, "a zero-day period is refused: {body}");
    assert_eq!(me.post(&d, "/trials/2/approve", "csrf=forged").0, 403);
    // A page shown before the edit (another tab) approves nothing unseen.
    let (status, body) = me.post(
        &d,
        "/trials/2/approve",
        &format!("csrf={csrf}&protocol_hash={hash_before}"),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("changed after this page was shown"), "{body}");
    assert_eq!(me.json(&d, "/api/trials/2")["status"], "proposed");
    // The page as it is now carries the edited version's hash.
    let (_, page) = me.get(&d, "/proposals");
    let shown = edited[0]["protocol_hash"].as_str().unwrap();
    assert!(
        page.contains(&format!("name=\"protocol_hash\" value=\"{shown}\"")),
        "{page}"
    );
    assert_eq!(
        me.post(
            &d,
            "/trials/2/approve",
            &format!("csrf={csrf}&protocol_hash={shown}")
        )
        .0,
        303
    );
    let trial2 = me.json(&d, "/api/trials/2");
    assert_eq!(trial2["status"], "approved");
    assert!(
        trial2["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"].as_str().unwrap().starts_with("edited: "))
    );
    // An approved trial's protocol is locked.
    assert_eq!(
        me.post(
            &d,
            "/proposals/2/edit",
            &format!("csrf={csrf}&period_days=5&max_blocks=4&mid=6")
        )
        .0,
        409
    );

    // The self-report form. The clock is pinned at noon, before the demo's
    // 21:00 rating: today's rating is the participant's, recorded once, and
    // the first one stands.
    let (status, form) = me.get(&d, "/trials/1/report");
    assert_eq!(status, 200);
    assert!(form.contains("How anxious"));
    let today: jiff::civil::Date = me.json(&d, "/api/trials/1")["calendar"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["today"] == true)
        .unwrap()["date"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let yesterday = today.yesterday().unwrap();
    let tomorrow = today.tomorrow().unwrap();
    // The overview opens with today's card: the arm, what to do, and the
    // day's rating form (posting to the same report form).
    let (_, overview) = me.get(&d, "/");
    let card = overview
        .find("class=\"today-card\"")
        .expect("a Today card on the overview");
    assert!(
        overview.find("class=\"standing").is_none_or(|s| card < s),
        "the Today card comes first: {overview}"
    );
    assert!(overview.contains("<h2>Today: "), "{overview}");
    assert!(
        overview.contains(&format!("name=\"date\" value=\"{today}\"")),
        "{overview}"
    );
    assert!(overview.contains("How anxious"), "{overview}");
    let (status, _) = me.post(
        &d,
        "/trials/1/report",
        &format!("date={today}&rating=3&adherence=done"),
    );
    assert_eq!(status, 403, "no CSRF token");
    let store = nof1d::service::store::Store::open_read_only(&data.join("nof1d.sqlite")).unwrap();
    let before = store.counts().unwrap().observations;
    let (status, page) = me.post(
        &d,
        "/trials/1/report",
        &format!("csrf={csrf}&date={today}&rating=3&adherence=done"),
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("recorded rating 3"), "{page}");
    assert!(page.contains("recorded done"), "{page}");
    let after = store.counts().unwrap().observations;
    assert_eq!(after, before + 1);
    let (status, page) = me.post(
        &d,
        "/trials/1/report",
        &format!("csrf={csrf}&date={today}&rating=9"),
    );
    assert_eq!(status, 200);
    assert!(page.contains("already has a rating (3)"), "{page}");
    assert_eq!(store.counts().unwrap().observations, after);
    // Unless it is corrected: the new value replaces it (no new row), the
    // first one is kept with the reason, the form shows both, and the
    // trial is refitted though no day was added (the data's digest
    // changed).
    let rating = || {
        store
            .observations(1, "anxiety_evening", &[])
            .unwrap()
            .into_iter()
            .filter(|o| o.1 == today)
            .map(|o| o.2)
            .collect::<Vec<_>>()
    };
    let fits_before = store.fits(1, "anxiety_evening", 1000).unwrap().len();
    let (status, page) = me.post(
        &d,
        "/trials/1/report",
        &format!("csrf={csrf}&date={today}&rating=8&correct=yes&reason=wrong+number"),
    );
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("corrected the rating of {today} from 3 to 8")),
        "{page}"
    );
    assert!(
        page.contains("8 <span class=\"muted\">(corrected from 3)</span>"),
        "{page}"
    );
    assert_eq!(rating(), [8.0]);
    assert_eq!(store.counts().unwrap().observations, after);
    let corrections = store.rating_corrections(1).unwrap();
    assert_eq!(corrections.len(), 1);
    let c = &corrections[0];
    assert_eq!(
        (
            c.date,
            c.old_value,
            c.new_value,
            c.reason.as_str(),
            c.actor.as_str()
        ),
        (today, 3.0, 8.0, "wrong number", "dashboard")
    );
    // The refits job comes within its period (60 s by default), the
    // assignments job (every 20 s) sooner after 07:30.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while store.fits(1, "anxiety_evening", 1000).unwrap().len() == fits_before {
        assert!(
            std::time::Instant::now() < deadline,
            "no refit after the correction"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let latest = store.latest_fit(1, "anxiety_evening").unwrap().unwrap();
    assert!(latest.data_digest.is_some());
    // The Today card now shows the day's answer instead of the form.
    let (_, overview) = me.get(&d, "/");
    assert!(overview.contains("Today's answer: 8."), "{overview}");
    assert!(!overview.contains(&format!("name=\"date\" value=\"{today}\"")));
    // Adherence for a past day may still be given.
    let (status, page) = me.post(
        &d,
        "/trials/1/report",
        &format!("csrf={csrf}&date={yesterday}&adherence=not_done"),
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("recorded not_done"), "{page}");
    assert_eq!(store.counts().unwrap().observations, after);
    for (bad, why) in [
        (format!("date={tomorrow}&rating=3"), "has not happened yet"),
        (format!("date={yesterday}&rating=11"), "from 0 to 10"),
        ("date=yesterday&rating=3".to_string(), "is not a date"),
        (format!("date={yesterday}"), "choose a rating"),
    ] {
        let (status, page) = me.post(&d, "/trials/1/report", &format!("csrf={csrf}&{bad}"));
        assert_eq!(status, 422, "{bad}");
        assert!(page.contains(why), "{bad}: {page}");
    }
    assert_eq!(store.counts().unwrap().observations, after);

    // Pause from the trial page: its button leads to a page that says what
    // pausing does and asks why; a post without that confirmation only
    // leads there.
    assert_eq!(me.post(&d, "/trials/1/pause", "csrf=").0, 403);
    let (_, page) = me.get(&d, "/trials/1");
    assert!(
        page.contains("action=\"/trials/1/confirm/pause\""),
        "{page}"
    );
    let r = no_redirects()
        .post(d.url("/trials/1/pause"))
        .header("cookie", &me.cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/trials/1/confirm/pause");
    assert_eq!(me.json(&d, "/api/trials/1")["status"], "running");
    let (status, confirm) = me.get(&d, "/trials/1/confirm/pause");
    assert_eq!(status, 200);
    assert!(
        confirm.contains("the rest of the schedule moves"),
        "{confirm}"
    );
    assert!(
        confirm.contains("name=\"confirm\" value=\"yes\""),
        "{confirm}"
    );
    assert_eq!(
        me.post(
            &d,
            "/trials/1/pause",
            &format!("csrf={csrf}&confirm=yes&reason=a+week+away")
        )
        .0,
        303
    );
    let detail = me.json(&d, "/api/trials/1");
    assert_eq!(detail["status"], "paused");
    let events = detail["events"].as_array().unwrap();
    assert_eq!(
        events.last().unwrap()["reason"],
        "paused on the dashboard: a week away"
    );
    let (_, page) = me.get(&d, "/trials/1");
    assert!(page.contains("This trial is paused"), "no banner: {page}");

    // A stop needs a reason; once stopped, it can be undone for a day.
    let (status, refused) = me.post(
        &d,
        "/trials/1/stop",
        &format!("csrf={csrf}&confirm=yes&reason=+"),
    );
    assert_eq!(status, 422);
    assert!(refused.contains("Say why the trial stops"), "{refused}");
    assert_eq!(me.json(&d, "/api/trials/1")["status"], "paused");
    let (_, confirm) = me.get(&d, "/trials/1/confirm/stop");
    assert!(
        confirm.contains("You can undo a stop for 24 hours"),
        "{confirm}"
    );
    assert_eq!(
        me.post(
            &d,
            "/trials/1/stop",
            &format!("csrf={csrf}&confirm=yes&reason=moving+house")
        )
        .0,
        303
    );
    let detail = me.json(&d, "/api/trials/1");
    assert_eq!(detail["status"], "stopped");
    assert_eq!(detail["stop_reason"], "moving house");
    assert!(detail["undo_until"].is_string(), "{detail}");
    let (_, page) = me.get(&d, "/trials/1");
    assert!(page.contains("Undo the stop"), "{page}");
    assert_eq!(
        me.post(&d, "/trials/1/undo", &format!("csrf={csrf}")).0,
        303
    );
    let detail = me.json(&d, "/api/trials/1");
    assert_eq!(detail["status"], "paused", "back to where it was");
    assert!(detail["undo_until"].is_null());
    assert_eq!(detail["stop_reason"], serde_json::Value::Null);
    // Nothing to undo now.
    assert_eq!(
        me.post(&d, "/trials/1/undo", &format!("csrf={csrf}")).0,
        409
    );

    // Every documented GET path answers with the documented required keys.
    let doc = me.json(&d, "/api/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    let schemas = &doc["components"]["schemas"];
    let required = |schema: &serde_json::Value| -> Vec<String> {
        let s = match schema["$ref"].as_str() {
            Some(r) => &schemas[r.rsplit('/').next().unwrap()],
            None => schema,
        };
        s["required"]
            .as_array()
            .map(|a| a.iter().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(get) = item.get("get") else { continue };
        // A link's page and the OAuth callback answer only with their
        // parameters (a signed token; a vendor's code and state).
        if path.starts_with("/l/") || path == "/oauth/callback" {
            continue;
        }
        let url = path
            .replace("{id}", "1")
            .replace("{file}", "days.csv")
            .replace("{action}", "pause");
        let (status, body) = me.get(&d, &url);
        assert_eq!(status, 200, "{url}: {body}");
        let Some(schema) = get["responses"]["200"]["content"]["application/json"].get("schema")
        else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (object, schema) = match value.as_array() {
            Some(items) if !items.is_empty() => (items[0].clone(), &schema["items"]),
            Some(_) => continue,
            None => (value.clone(), schema),
        };
        for key in required(schema) {
            assert!(object.get(&key).is_some(), "{url}: no {key:?} in {object}");
        }
        checked += 1;
    }
    // status, trials/1, sources, healthz (proposals is empty by now; its
    // keys were read above).
    assert!(checked >= 4, "{checked} JSON paths checked");
}
