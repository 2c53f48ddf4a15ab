//! Shared helpers: start the real `nof1d` binary on a random loopback port
//! with its own data folder, and talk to it over real HTTP.
#![allow(dead_code)]

pub mod smtp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nof1d")
}

/// Runs `nof1d ARGS` to completion.
pub fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("NOF1D_LOG")
        .output()
        .expect("run nof1d")
}

/// Runs `nof1d ARGS` to completion and asserts it succeeded (its stderr in
/// the failure message).
pub fn run_ok(args: &[&str], cwd: &Path) -> Output {
    let out = run(args, cwd);
    assert!(
        out.status.success(),
        "nof1d {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `nof1d serve` on `data` (random loopback port), expects it to refuse
/// to start, and returns its stderr.
pub fn serve_refused(data: &Path, cwd: &Path) -> String {
    let out = run(
        &[
            "serve",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
        cwd,
    );
    assert!(!out.status.success(), "serve should have refused to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Noon UTC on a fixed day: the demo's "today" in tests that count its rows.
pub const PINNED_START: &str = "2026-11-25T12:00:00Z";

/// Writes a config beside `data` whose clock starts at [`PINNED_START`] and
/// runs at real speed, and returns `--demo --config FILE`. The demo's history
/// then always has 42 evening ratings: on the real clock a test run after
/// 21:00 (the demo's rating time) would also see today's.
pub fn pinned_demo_args(data: &Path) -> Vec<String> {
    let config = data.with_file_name("pinned-clock.toml");
    std::fs::write(&config, format!("[clock]\nstart = {PINNED_START:?}\n")).unwrap();
    vec![
        "--demo".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

/// Writes `text` as `DATA/nof1d.toml`, creating DATA, and returns the
/// file's path (for `--config`).
pub fn write_config(data: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(data).unwrap();
    let config = data.join("nof1d.toml");
    std::fs::write(&config, text).unwrap();
    config
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub data: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `nof1d serve --data-dir DATA --listen 127.0.0.1:0 EXTRA...` and
    /// waits until `/healthz` answers.
    pub fn start(data: &Path, extra: &[&str]) -> Daemon {
        let d = Daemon::spawn(data, extra);
        d.wait_healthy(Duration::from_secs(30));
        d
    }

    /// Starts without waiting.
    pub fn spawn(data: &Path, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(data).unwrap();
        let _ = std::fs::remove_file(data.join("listen.addr"));
        let log = data.join(format!("daemon-{}.log", unique()));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        if !extra.contains(&"--listen") {
            args.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(bin())
            .args(&args)
            .current_dir(data)
            .env("NOF1D_LOG", "info,tokio_cron_scheduler=warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn nof1d");
        Daemon {
            child,
            data: data.to_path_buf(),
            log,
        }
    }

    /// Waits for the address file and a 200 from `/healthz`.
    pub fn wait_healthy(&self, timeout: Duration) -> &Self {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(addr) = self.read_addr()
                && let Ok(r) = client().get(format!("http://{addr}/healthz")).send()
                && r.status().is_success()
            {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not healthy in time; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn read_addr(&self) -> Option<String> {
        std::fs::read_to_string(self.data.join("listen.addr"))
            .ok()
            // A wildcard bind is reached over loopback.
            .map(|s| s.trim().replace("0.0.0.0:", "127.0.0.1:"))
            .filter(|s| !s.is_empty())
    }

    /// Base URL.
    pub fn url(&self, path: &str) -> String {
        let addr = self.read_addr().expect("daemon has an address");
        format!("http://{addr}{path}")
    }

    /// GET a path, returning status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = client().get(self.url(path)).send().expect("GET");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// GET a path's body, or what went wrong: for a failure message, so
    /// it never panics itself (the daemon may have died or hung).
    pub fn try_get(&self, path: &str) -> String {
        let Some(addr) = self.read_addr() else {
            return "(the daemon has no address)".into();
        };
        match client().get(format!("http://{addr}{path}")).send() {
            Ok(r) => r.text().unwrap_or_default(),
            Err(e) => format!("(GET {path}: {e})"),
        }
    }

    /// GET JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    }

    /// Polls `/healthz` until every job has run at least `runs` times.
    pub fn wait_jobs(&self, runs: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.json("/healthz");
            let done = ["sources", "refits", "assignments", "outbox"]
                .iter()
                .all(|j| h["jobs"][j]["runs"].as_u64().unwrap_or(0) >= runs);
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "jobs did not run: {h}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A client that does not follow redirects (to see 303s and cookies).
pub fn no_redirects() -> reqwest::blocking::Client {
    nof1d::service::http::client_builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An HTTP client with a short timeout.
pub fn client() -> reqwest::blocking::Client {
    nof1d::service::http::client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The argon2 PHC hash of `password` with a fixed salt (tests only).
pub fn hash(password: &str) -> String {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// The first `name="csrf" value="…"` of a page.
pub fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry a CSRF token")
        .to_string()
}

/// Presses Connect on the sources page and plays the browser through the
/// vendor and back; returns the callback's status.
pub fn connect(daemon: &Daemon) -> u16 {
    let http = no_redirects();
    let page = http
        .get(daemon.url("/sources"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("Connect"), "{page}");
    let action = page
        .split("action=\"")
        .map(|s| s.split('"').next().unwrap())
        .find(|a| a.ends_with("/connect"))
        .unwrap()
        .to_string();
    let begun = http
        .post(daemon.url(&action))
        .form(&[("csrf", csrf_of(&page))])
        .send()
        .unwrap();
    assert_eq!(begun.status(), 303);
    let authorize = begun.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let back = http.get(&authorize).send().unwrap();
    assert_eq!(back.status(), 302);
    let callback = back.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        callback.starts_with(&daemon.url("/oauth/callback")),
        "{callback}"
    );
    let done = http.get(&callback).send().unwrap();
    // The same state again: refused (a state is good once).
    let again = http.get(&callback).send().unwrap();
    assert_eq!(again.status(), 400);
    done.status().as_u16()
}

/// Serves `app` (a fake vendor: axum on its own thread and runtime) on a
/// random loopback port; returns its base URL.
pub fn serve_fake(app: axum::Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    url
}

/// A read-only connection to a data folder's database.
pub fn db(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data.join("nof1d.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// The one number `sql` counts in a data folder's database.
pub fn count(data: &Path, sql: &str) -> i64 {
    db(data).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Waits up to a minute for `done`, failing with `what` and the daemon's log.
pub fn wait_until(what: &str, daemon: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A signed-in browser: the session cookie.
pub struct Session {
    /// `nof1d_session=…`.
    pub cookie: String,
}

impl Session {
    /// GET with the cookie: status and body.
    pub fn get(&self, d: &Daemon, path: &str) -> (u16, String) {
        let r = no_redirects()
            .get(d.url(path))
            .header("cookie", &self.cookie)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// GET JSON with the cookie (200 asserted).
    pub fn json(&self, d: &Daemon, path: &str) -> serde_json::Value {
        let (status, body) = self.get(d, path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// POST a form body with the cookie: status and body.
    pub fn post(&self, d: &Daemon, path: &str, body: &str) -> (u16, String) {
        let r = no_redirects()
            .post(d.url(path))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    }
}

/// Fetches the login page and posts its form with `password`.
pub fn post_login(d: &Daemon, password: &str) -> reqwest::blocking::Response {
    let page = client()
        .get(d.url("/login"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    no_redirects()
        .post(d.url("/login"))
        .form(&[
            ("csrf", csrf_of(&page).as_str()),
            ("password", password),
            ("next", "/trials/1"),
        ])
        .send()
        .unwrap()
}

/// Posts the login form; returns the status and the Set-Cookie header.
pub fn login(d: &Daemon, password: &str) -> (u16, Option<String>) {
    let r = post_login(d, password);
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), cookie)
}

/// Signs in with `password` (the cookie's flags asserted).
pub fn session(d: &Daemon, password: &str) -> Session {
    let (status, cookie) = login(d, password);
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    Session {
        cookie: cookie.split(';').next().unwrap().to_string(),
    }
}
