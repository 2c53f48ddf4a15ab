//! The hardening issue's attacks against the real binary on loopback, each
//! as it was reproduced: a truncated database, DNS rebinding and cross-site
//! posts, parallel password guessing, bearer guessing, a weak token, stale
//! sessions, slow headers, a reused side-effect link, an open redirect, an
//! out-of-window self-report, world-readable files, and unbounded arguments.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, client, csrf_of, hash, no_redirects, run, run_ok};
use nof1d::service::store::Store;

const PASSWORD: &str = "evening calm 42";
const TOKEN: &str = "4f1c0e6b9a2d87f35c6e0b1a9d8f7e6c";

fn sha256(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

/// A daemon with a password and a token, the demo, a pinned clock.
fn start_locked(data: &Path) -> Daemon {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("token"), format!("{TOKEN}\n")).unwrap();
    let config = common::write_config(
        data,
        &format!(
            "[web]\npassword_hash = {:?}\ntoken = {{ file = {:?} }}\n[jobs]\ncalibrate = false\n[clock]\nstart = {:?}\n",
            hash(PASSWORD),
            data.join("token").display().to_string(),
            common::PINNED_START
        ),
    );
    Daemon::start(data, &["--demo", "--config", config.to_str().unwrap()])
}

/// An open (loopback, no password) daemon with the demo and a pinned clock.
fn start_open(data: &Path, extra_config: &str) -> Daemon {
    let config = common::write_config(
        data,
        &format!(
            "[jobs]\ncalibrate = false\nassignment_check_seconds = 1\noutbox_seconds = 1\n[clock]\nstart = {:?}\n{extra_config}",
            common::PINNED_START
        ),
    );
    Daemon::start(data, &["--demo", "--config", config.to_str().unwrap()])
}

fn trial_status(d: &Daemon) -> String {
    d.json("/api/trials/1")["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_truncated_database_beside_its_data_is_refused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A crash leaves the newest data in the write-ahead log.
    let d = start_open(&data, "");
    d.wait_jobs(1, Duration::from_secs(30));
    d.kill9();
    let db = data.join("nof1d.sqlite");
    let wal = data.join("nof1d.sqlite-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    std::fs::File::create(&db).unwrap(); // `: > nof1d.sqlite`
    let before = sha256(&wal);
    let stderr = common::serve_refused(&data, dir.path());
    assert!(
        stderr.contains("refusing to create a new, empty database"),
        "{stderr}"
    );
    assert!(stderr.contains("nof1d.sqlite-wal"), "{stderr}");
    assert_eq!(sha256(&wal), before, "the WAL must be left as it was");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
}

#[test]
fn a_clean_stop_leaves_everything_in_the_database_file_and_a_deleted_one_is_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = start_open(&data, "");
    d.wait_jobs(1, Duration::from_secs(30));
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
    let db = data.join("nof1d.sqlite");
    let wal_len = std::fs::metadata(data.join("nof1d.sqlite-wal")).map_or(0, |m| m.len());
    assert_eq!(wal_len, 0, "checkpointed at shutdown");
    let counts = Store::open_read_only(&db).unwrap().counts().unwrap();
    assert!(counts.trials >= 1 && counts.schedule_days > 0, "{counts:?}");
    // The file deleted by mistake: the folder still shows a database lived here.
    std::fs::remove_file(&db).unwrap();
    let stderr = common::serve_refused(&data, dir.path());
    assert!(stderr.contains("refusing to create"), "{stderr}");
    assert!(!db.exists());
}

#[test]
fn files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = start_open(&data, "");
    let mail = data.join("mail");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&mail).map_or(true, |mut m| m.next().is_none()) {
        assert!(Instant::now() < deadline, "no mail written");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        mode(&data),
        0o700,
        "an existing wide data folder is narrowed"
    );
    assert_eq!(mode(&mail), 0o700);
    for name in [
        "nof1d.sqlite",
        "nof1d.sqlite-wal",
        "nof1d.sqlite-shm",
        "nof1d.lock",
        "listen.addr",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for eml in std::fs::read_dir(&mail).unwrap() {
        let p = eml.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let backup = dir.path().join("backup.sqlite");
    run_ok(
        &[
            "backup",
            backup.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(mode(&backup), 0o600);
    drop(d);
}

#[test]
fn a_foreign_host_or_a_cross_site_post_changes_nothing_and_every_answer_has_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_open(&dir.path().join("data"), "");
    let page = d.get("/trials/1/confirm/pause").1;
    let csrf = csrf_of(&page);
    let addr = d
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // DNS rebinding: the attacker's name in Host.
    let r = client()
        .get(d.url("/trials/1"))
        .header("host", "attacker.example")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().unwrap().contains("web.allowed_hosts"));
    let pause = |host: &str, origin: Option<&str>| {
        let mut req = no_redirects()
            .post(d.url("/trials/1/pause"))
            .header("host", host)
            .form(&[
                ("csrf", csrf.as_str()),
                ("confirm", "yes"),
                ("reason", "attack"),
            ]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(pause("attacker.example", None), 403);
    assert_eq!(pause(&addr, Some("http://attacker.example")), 403);
    assert_eq!(pause(&addr, Some("null")), 403);
    let cross = no_redirects()
        .post(d.url("/trials/1/pause"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf.as_str()), ("reason", "attack")])
        .send()
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403);
    assert_eq!(trial_status(&d), "running", "nothing changed");
    // The dashboard's own page still works, by name or by address.
    assert_eq!(pause(&addr, Some(&format!("http://{addr}"))), 303);
    assert_eq!(trial_status(&d), "paused");
    let port = addr.rsplit(':').next().unwrap();
    let r = client()
        .get(d.url("/"))
        .header("host", format!("localhost:{port}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for path in [
        "/",
        "/trials/1",
        "/api/status",
        "/login",
        "/healthz",
        "/nowhere",
    ] {
        let r = no_redirects().get(d.url(path)).send().unwrap();
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
    }
    let css = client().get(d.url("/style.css")).send().unwrap();
    assert!(
        css.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
}

#[test]
fn parallel_wrong_passwords_hit_the_limit_which_survives_a_restart_and_logout_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = start_locked(&data);
    let login_page = client()
        .get(d.url("/login"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let csrf = csrf_of(&login_page);
    // A session first, to sign out of later.
    let r = no_redirects()
        .post(d.url("/login"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("password", PASSWORD),
            ("next", "/"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let with_cookie = |path: &str| {
        no_redirects()
            .get(d.url(path))
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with_cookie("/api/status"), 200);
    let page = no_redirects()
        .get(d.url("/"))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let session_csrf = csrf_of(&page);
    let out = no_redirects()
        .post(d.url("/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", session_csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(out.status().as_u16(), 303);
    assert_eq!(
        with_cookie("/api/status"),
        401,
        "the old cookie is dead on the server"
    );
    assert_eq!(with_cookie("/"), 303);

    // 40 wrong passwords at once from one address.
    let url = d.url("/login");
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let (url, csrf) = (url.clone(), csrf.clone());
                s.spawn(move || {
                    no_redirects()
                        .post(&url)
                        .form(&[
                            ("csrf", csrf.as_str()),
                            ("password", &format!("guess {i}")),
                            ("next", "/"),
                        ])
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wrong = codes.iter().filter(|&&c| c == 401).count();
    let limited = codes.iter().filter(|&&c| c == 429).count();
    assert_eq!(wrong, 5, "{codes:?}");
    assert_eq!(limited, 35, "{codes:?}");
    // Even the right password waits now, and a restart does not clear it.
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
    let d = start_locked(&data);
    let r = no_redirects()
        .post(d.url("/login"))
        .form(&[
            (
                "csrf",
                csrf_of(
                    &client()
                        .get(d.url("/login"))
                        .send()
                        .unwrap()
                        .text()
                        .unwrap(),
                )
                .as_str(),
            ),
            ("password", PASSWORD),
            ("next", "/"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

#[test]
fn wrong_bearer_tokens_are_limited_but_lock_out_neither_the_right_token_nor_logins() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_locked(&dir.path().join("data"));
    let ok = client()
        .get(d.url("/api/status"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let codes: Vec<u16> = (0..8)
        .map(|i| {
            client()
                .get(d.url("/api/status"))
                .bearer_auth(format!("{TOKEN}{i}"))
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(codes[..5], [401; 5], "{codes:?}");
    assert_eq!(codes[5..], [429; 3], "{codes:?}");
    // Junk tokens cost nothing to send: they must not lock out the right
    // token (128 bits, not guessable) nor the password login.
    let r = client()
        .get(d.url("/api/status"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = common::post_login(&d, PASSWORD);
    assert_eq!(r.status().as_u16(), 303);
}

#[test]
fn health_answers_anyone_with_counts_and_flags_and_only_a_credential_with_error_texts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A file the inbox cannot read: the sources job's error names it.
    let inbox = data.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let notes = inbox.join("clinic-secret-notes.txt");
    std::fs::write(&notes, "not health data").unwrap();
    // Settled: nobody has written it for an hour.
    std::fs::File::options()
        .write(true)
        .open(&notes)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let d = start_locked(&data);
    let deadline = Instant::now() + Duration::from_secs(30);
    let anyone = loop {
        let h = d.json("/healthz");
        if h["jobs"]["sources"]["runs"].as_u64().unwrap_or(0) >= 1 {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "the sources job did not run: {h}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Without a credential: the failure counts, no text of it or of any
    // job's summary.
    assert_eq!(anyone["status"], "degraded", "{anyone}");
    assert_eq!(anyone["jobs"]["sources"]["failing"], true, "{anyone}");
    assert_eq!(anyone["jobs"]["sources"]["failures"], 1, "{anyone}");
    assert!(
        anyone["jobs"]["sources"]["last_error"].is_null(),
        "{anyone}"
    );
    for (name, job) in anyone["jobs"].as_object().unwrap() {
        assert!(job["last_summary"].is_null(), "{name}: {anyone}");
    }
    assert!(!anyone.to_string().contains("clinic-secret"), "{anyone}");
    // With the token: the text that says what failed.
    let known: serde_json::Value = client()
        .get(d.url("/healthz"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(known["jobs"]["sources"]["failing"], true, "{known}");
    let error = known["jobs"]["sources"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("clinic-secret-notes.txt"), "{known}");
}

#[test]
fn a_weak_token_is_refused_at_start_with_the_command_that_makes_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("token"), "x\n").unwrap();
    let config = dir.path().join("nof1d.toml");
    std::fs::write(
        &config,
        format!(
            "[web]\ntoken = {{ file = {:?} }}\n",
            data.join("token").display().to_string()
        ),
    )
    .unwrap();
    let out = run(
        &[
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("web.token is too weak"), "{stderr}");
    assert!(stderr.contains("nof1d new-token"), "{stderr}");
    assert!(!stderr.contains("\nx\n"), "the token is never printed");
    let made = run(&["new-token"], dir.path());
    let token = String::from_utf8(made.stdout).unwrap();
    assert_eq!(token.trim().len(), 64);
    assert!(nof1d::service::config::token_bits(token.trim()) >= 128.0);
}

#[test]
fn connections_that_never_finish_their_headers_are_closed_and_health_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_open(
        &dir.path().join("data"),
        "[web]\nheader_timeout_seconds = 1\nmax_connections = 64\n",
    );
    let addr = d
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // An idle connection that sends nothing at all is closed too.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    for s in slow.iter_mut().chain(std::iter::once(&mut idle)) {
        let mut buf = [0u8; 512];
        // Closed: end of file, or an error answer then end of file.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(d.get("/healthz").0, 200);
}

#[test]
fn a_full_connection_cap_drains_and_a_body_that_never_comes_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_open(
        &dir.path().join("data"),
        "[web]\nheader_timeout_seconds = 2\nrequest_timeout_seconds = 2\nmax_connections = 8\n",
    );
    let addr = d
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // Headers complete, then a body that never comes: held by the request
    // time-out, not the header one.
    let mut stuck: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(
                b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            s
        })
        .collect();
    // They fill every slot; a health check waits its turn and is answered
    // once they time out.
    let started = Instant::now();
    let health = client().get(d.url("/healthz")).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let mut answer = String::new();
    let _ = stuck[0].read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// The links of the newest `.eml` in the data folder's mail, by label.
fn mail_links(data: &Path) -> std::collections::BTreeMap<String, String> {
    let mail = data.join("mail");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files: Vec<_> = std::fs::read_dir(&mail)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(eml) = files
            .iter()
            .find(|p| p.to_string_lossy().contains("assignment"))
        {
            let raw = std::fs::read(eml).unwrap();
            let message = mail_parser::MessageParser::default().parse(&raw).unwrap();
            let text = message.body_text(0).unwrap().to_string();
            return text
                .lines()
                .filter_map(|l| {
                    let (label, url) = l.trim().split_once(": http")?;
                    Some((label.to_string(), format!("http{url}")))
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "no assignment email");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_used_side_effect_link_stops_nothing_and_the_report_form_keeps_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = start_open(&data, "");
    let links = mail_links(&data);
    let side = links
        .get("Side effect")
        .unwrap_or_else(|| panic!("no side-effect link in {links:?}"));
    // The link's address is the daemon's own (public_url defaults to it).
    let post = |stop: bool| {
        let mut form = vec![];
        if stop {
            form.push(("stop", "1"));
        }
        client()
            .post(side)
            .form(&form)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let first = post(false);
    assert!(first.contains("Thank you"), "{first}");
    let again = post(true);
    assert!(again.contains("already used"), "{again}");
    assert!(!again.contains("trial is stopped"), "{again}");
    assert_eq!(trial_status(&d), "running");

    // The self-report form: 30 days back is refused and stores nothing.
    let page = d.get("/trials/1/report").1;
    let csrf = csrf_of(&page);
    let store = || Store::open_read_only(&data.join("nof1d.sqlite")).unwrap();
    let before = store().counts().unwrap();
    let adherence_before = store().adherence(1).unwrap();
    let r = client()
        .post(d.url("/trials/1/report"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("date", "2026-10-26"),
            ("rating", "3"),
            ("adherence", "not_done"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.text().unwrap().contains("only the last 14 days"));
    assert_eq!(store().counts().unwrap(), before);
    assert_eq!(store().adherence(1).unwrap(), adherence_before);
}

#[test]
fn a_side_effect_link_stops_the_trial_once_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = start_open(&data, "");
    let links = mail_links(&data);
    let side = links
        .get("Side effect")
        .expect("a side-effect link")
        .clone();
    let post = || {
        client()
            .post(&side)
            .form(&[("stop", "1")])
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let first = post();
    assert!(first.contains("The trial is stopped"), "{first}");
    assert_eq!(trial_status(&d), "stopped");
    let store = || Store::open_read_only(&data.join("nof1d.sqlite")).unwrap();
    let before = store().counts().unwrap();
    let again = post();
    assert!(again.contains("already used"), "{again}");
    assert!(!again.contains("The trial is stopped"), "{again}");
    assert_eq!(
        store().counts().unwrap(),
        before,
        "a used link changes nothing"
    );
}

#[test]
fn the_login_never_sends_a_browser_to_another_site() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_locked(&dir.path().join("data"));
    let page = client()
        .get(d.url("/login?next=%2F%09%2Fevil.example"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains(r#"name="next" value="/""#), "{page}");
    let r = no_redirects()
        .post(d.url("/login"))
        .form(&[
            ("csrf", csrf_of(&page).as_str()),
            ("password", PASSWORD),
            ("next", "/\t/evil.example"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/");
}

#[test]
fn arguments_that_size_work_are_bounded_and_files_are_read_with_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let protocol = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocols/meditation-anxiety.toml"
    );
    let started = Instant::now();
    let out = run(
        &["simulate", "--protocol", protocol, "--trials", "1000000000"],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 to 1000000"), "{stderr}");
    let out = run(
        &["simulate", "--protocol", protocol, "--effect", "NaN"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a finite number"));
    let out = run(&["protocol", "check", "/dev/zero"], dir.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 MiB limit")
            || String::from_utf8_lossy(&out.stderr).contains("1 MiB limit")
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // A 5 MB cell is not echoed whole.
    let csv = dir.path().join("big.csv");
    let mut f = std::fs::File::create(&csv).unwrap();
    writeln!(f, "day,arm,y").unwrap();
    writeln!(f, "1,a,{}", "9x".repeat(2_500_000)).unwrap();
    drop(f);
    let out = run(
        &[
            "analyze",
            "--data",
            csv.to_str().unwrap(),
            "--comparator",
            "a",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.len() < 2_000, "{} bytes of error", stderr.len());
    assert!(stderr.contains("more characters"), "{stderr}");
}
