#!/usr/bin/env python3
"""Replays the hardening issue's attacks against nof1d daemons this script
starts itself, on loopback, each with its own temporary data folder.

    python3 bench/attacks.py [--nof1d PATH] [--only a,b,...] [--keep]

Prints one row per check: attack, expected (what a hardened daemon does),
observed, PASS/FAIL; exits 1 when any check fails. Standard library only.
Everything is bounded: every request has a timeout, every wait a deadline,
and the whole run takes about one to two minutes.

Daemons:
  A  --demo, open dashboard (no credential, loopback), simulated clock pinned
     at 2026-11-25T12:00Z (real speed) so the demo's first assignment email
     is written at once to <data>/mail/*.eml; started with umask 022.
     Attacks a b c h i k l m o (request_timeout_seconds = 10, to keep o short).
  B  web.password_hash (made with `nof1d hash-password`) and web.token
     (64 hex digits, from an environment variable). Attacks d e g j.
  f and n start the binary on their own.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import select
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from email import policy
from email.parser import BytesParser
from html.parser import HTMLParser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINNED_START = "2026-11-25T12:00:00Z"
PINNED_TODAY = "2026-11-25"
THIRTY_DAYS_BACK = "2026-10-26"
TOKEN_ENV = "NOF1D_ATTACK_TOKEN"

RESULTS = []  # (attack, expected, observed, ok)


def record(attack, expected, observed, ok):
    RESULTS.append((attack, expected, str(observed), bool(ok)))
    print(f"  [{'PASS' if ok else 'FAIL'}] {attack}: {observed}", flush=True)


# ---------------------------------------------------------------- HTTP


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


def request(addr, method, path, headers=None, form=None, host=None, timeout=15):
    """One HTTP/1.1 request on a fresh connection; `host` overrides Host."""
    h, p = addr
    conn = http.client.HTTPConnection(h, p, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"{h}:{p}")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            conn.putheader("Content-Type", "application/x-www-form-urlencoded")
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        r = conn.getresponse()
        body = r.read().decode("utf-8", "replace")
        return Resp(r.status, r.getheaders(), body)
    finally:
        conn.close()


def same_origin(addr):
    """What a browser adds to a same-origin form POST."""
    return {"Origin": f"http://{addr[0]}:{addr[1]}", "Sec-Fetch-Site": "same-origin"}


class _Hidden(HTMLParser):
    """Collects the hidden inputs of a page, attributes in any order."""

    def __init__(self):
        super().__init__()
        self.fields = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and (a.get("type") or "").lower() == "hidden" and a.get("name"):
            self.fields.append((a["name"], a.get("value") or ""))


def hidden_fields(body):
    p = _Hidden()
    p.feed(body)
    return p.fields


def hidden_inputs(body):
    return dict(hidden_fields(body))


def csrf_of(body):
    return next((v for n, v in hidden_fields(body) if n == "csrf"), None)


def cookies_of(resp):
    """`name=value` pairs of every Set-Cookie that sets a non-empty value."""
    out = []
    for c in resp.all("Set-Cookie"):
        pair = c.split(";", 1)[0].strip()
        if "=" in pair and pair.split("=", 1)[1]:
            out.append(pair)
    return "; ".join(out)


# ---------------------------------------------------------------- processes


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_bounded(cmd, timeout=5.0, max_rss_mib=1024, cwd=None, env=None, umask=None):
    """Runs cmd; kills it after `timeout` s or above `max_rss_mib` resident.
    Returns (returncode or None if killed, seconds, peak RSS MiB, why killed, stderr)."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        def pre():
            os.setsid()
            if umask is not None:
                os.umask(umask)

        p = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err, preexec_fn=pre,
        )
        peak, why = 0, None
        while p.poll() is None:
            peak = max(peak, peak_rss_kib(p.pid))
            if peak > max_rss_mib * 1024:
                why = f"RSS above {max_rss_mib} MiB"
            elif time.monotonic() - t0 > timeout:
                why = f"still running after {timeout:.0f} s"
            if why:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    return (None if why else p.returncode), elapsed, peak / 1024, why, stderr


def first_line(text, n=110):
    for line in text.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line:
            return line[:n]
    return ""


class Daemon:
    """`nof1d --config CONFIG serve EXTRA...` with stderr to a log file."""

    def __init__(self, nof1d, workdir, name, config_text, data_dir, extra=(), env=None, umask=None):
        self.nof1d, self.workdir, self.name = nof1d, workdir, name
        self.data_dir = data_dir
        self.config = os.path.join(workdir, f"{name}.toml")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.extra = list(extra)
        self.env = dict(os.environ)
        self.env.pop("NOF1D_LOG", None)
        self.env.update(env or {})
        self.umask = umask
        self.proc = None
        self.addr = None
        self.starts = 0

    def log_path(self):
        return os.path.join(self.workdir, f"{self.name}-{self.starts}.log")

    def spawn(self):
        self.starts += 1
        try:
            os.unlink(os.path.join(self.data_dir, "listen.addr"))
        except OSError:
            pass
        umask = self.umask

        def pre():
            os.setsid()
            if umask is not None:
                os.umask(umask)

        self.log = open(self.log_path(), "wb")
        self.proc = subprocess.Popen(
            [self.nof1d, "--config", self.config, "serve", *self.extra],
            cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.log, preexec_fn=pre,
        )
        return self

    def read_addr(self):
        try:
            with open(os.path.join(self.data_dir, "listen.addr")) as f:
                text = f.read().strip()
        except OSError:
            return None
        if not text:
            return None
        host, port = text.rsplit(":", 1)
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return (host, int(port))

    def wait_healthy(self, timeout=40):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon {self.name} exited ({self.proc.returncode}): {self.log_tail()}")
            addr = self.read_addr()
            if addr:
                try:
                    if request(addr, "GET", "/healthz", timeout=3).status == 200:
                        self.addr = addr
                        return self
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon {self.name} not healthy in {timeout} s: {self.log_tail()}")

    def start(self):
        return self.spawn().wait_healthy()

    def log_tail(self, n=400):
        try:
            with open(self.log_path(), "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return re.sub(r"\x1b\[[0-9;]*m", "", text)[-n:]

    def stop(self, timeout=45):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.log.close()
        return self.proc.returncode if self.proc else None

    def get(self, path, **kw):
        return request(self.addr, "GET", path, **kw)

    def post(self, path, form, headers=None, **kw):
        h = same_origin(self.addr)
        h.update(headers or {})
        return request(self.addr, "POST", path, headers=h, form=form, **kw)


# ---------------------------------------------------------------- daemon A


def trial_status(a):
    r = a.get("/api/trials/1")
    if r.status != 200:
        return f"HTTP {r.status}"
    return json.loads(r.body).get("status")


def ensure_running(a):
    """Undo a pause an old daemon let through, so later checks see a running trial."""
    if trial_status(a) == "paused":
        csrf = csrf_of(a.get("/trials/1").body)
        a.post("/trials/1/resume", {"csrf": csrf})
        return "resumed afterwards"
    return ""


def check_c(a):
    want = [
        ("Content-Security-Policy", lambda v: v and "frame-ancestors 'none'" in v, "frame-ancestors 'none'"),
        ("X-Frame-Options", lambda v: v and v.strip().upper() == "DENY", "DENY"),
        ("X-Content-Type-Options", lambda v: v and v.strip().lower() == "nosniff", "nosniff"),
        ("Cache-Control", lambda v: v and "no-store" in v.lower(), "no-store"),
        ("Referrer-Policy", lambda v: v and v.strip().lower() == "no-referrer", "no-referrer"),
    ]
    for path in ["/", "/trials/1", "/api/status", "/login"]:
        attack = f"c. security headers on {path}"
        try:
            r = a.get(path)
            bad = [f"{n}={r.header(n)!r}" for n, ok, _ in want if not ok(r.header(n))]
            record(attack, "CSP frame-ancestors 'none', XFO DENY, nosniff, no-store, no-referrer",
                   f"HTTP {r.status}; " + ("all present" if not bad else "wrong: " + ", ".join(bad)),
                   r.status in (200, 303) and not bad)
        except Exception as e:  # noqa: BLE001
            record(attack, "headers present", f"error: {e}", False)
    try:
        r = a.get("/style.css")
        cc = r.header("Cache-Control") or ""
        record("c. /style.css stays cacheable", "200, Cache-Control without no-store",
               f"HTTP {r.status}, Cache-Control={cc!r}", r.status == 200 and "no-store" not in cc.lower())
    except Exception as e:  # noqa: BLE001
        record("c. /style.css stays cacheable", "200", f"error: {e}", False)


def check_a_b(a):
    port = a.addr[1]
    evil = "attacker.example"
    # Controls: the names a person types for a loopback dashboard still work.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        try:
            r = a.get("/", host=host)
            record(f"control: GET / with Host {host}", "200", f"HTTP {r.status}", r.status == 200)
        except Exception as e:  # noqa: BLE001
            record(f"control: GET / with Host {host}", "200", f"error: {e}", False)

    try:
        r = a.get("/", host=evil)
        record("a. DNS rebinding: GET / with Host attacker.example", "403 (or 421)",
               f"HTTP {r.status}", r.status in (403, 421))
    except Exception as e:  # noqa: BLE001
        record("a. DNS rebinding: GET / with Host attacker.example", "403", f"error: {e}", False)

    try:
        csrf = csrf_of(a.get("/trials/1").body)
        before = trial_status(a)
        # What a rebound page sends: its own origin, same-origin to the browser.
        r = request(a.addr, "POST", "/trials/1/pause", host=f"{evil}:{port}",
                    headers={"Origin": f"http://{evil}:{port}", "Sec-Fetch-Site": "same-origin"},
                    form={"csrf": csrf})
        after = trial_status(a)
        note = ensure_running(a)
        record("a. DNS rebinding: POST /trials/1/pause (valid csrf) with Host attacker.example",
               "403 (or 421), trial still running",
               f"HTTP {r.status}, trial {before} -> {after}" + (f" ({note})" if note else ""),
               r.status in (403, 421) and after == "running")
    except Exception as e:  # noqa: BLE001
        record("a. POST pause with Host attacker.example", "403", f"error: {e}", False)

    for label, hdrs in [
        ("Origin attacker + Sec-Fetch-Site cross-site",
         {"Origin": f"http://{evil}", "Sec-Fetch-Site": "cross-site"}),
        ("Origin attacker only", {"Origin": f"http://{evil}"}),
    ]:
        attack = f"b. cross-site POST /trials/1/pause (valid Host and csrf), {label}"
        try:
            csrf = csrf_of(a.get("/trials/1").body)
            r = request(a.addr, "POST", "/trials/1/pause", headers=hdrs, form={"csrf": csrf})
            after = trial_status(a)
            note = ensure_running(a)
            record(attack, "403, trial still running",
                   f"HTTP {r.status}, trial {after}" + (f" ({note})" if note else ""),
                   r.status == 403 and after == "running")
        except Exception as e:  # noqa: BLE001
            record(attack, "403", f"error: {e}", False)

    # Control: the dashboard's own same-origin form still works.
    try:
        csrf = csrf_of(a.get("/trials/1").body)
        r = a.post("/trials/1/pause", {"csrf": csrf})
        paused = trial_status(a)
        csrf = csrf_of(a.get("/trials/1").body)
        r2 = a.post("/trials/1/resume", {"csrf": csrf})
        resumed = trial_status(a)
        record("control: same-origin pause then resume", "303 paused, 303 running",
               f"HTTP {r.status} {paused}, HTTP {r2.status} {resumed}",
               r.status == 303 and paused == "paused" and r2.status == 303 and resumed == "running")
    except Exception as e:  # noqa: BLE001
        record("control: same-origin pause then resume", "303", f"error: {e}", False)


def check_k(a):
    attack = f"k. self-report for {THIRTY_DAYS_BACK} (30 days back)"

    def day(d):
        cal = json.loads(a.get("/api/trials/1").body)["calendar"]
        return next((c for c in cal if c["date"] == d), None)

    def streams():
        return json.loads(a.get("/api/status").body)["participants"]

    try:
        before, obs_before = day(THIRTY_DAYS_BACK), streams()
        csrf = csrf_of(a.get("/trials/1/report").body)
        r = a.post("/trials/1/report",
                   {"csrf": csrf, "date": THIRTY_DAYS_BACK, "rating": "3", "adherence": "not_done"})
        after, obs_after = day(THIRTY_DAYS_BACK), streams()
        unchanged = before == after and obs_before == obs_after
        record(attack, "422, nothing stored",
               f"HTTP {r.status}, day's adherence {before and before.get('adherence')!r} -> "
               f"{after and after.get('adherence')!r}, {'data unchanged' if unchanged else 'data changed'}",
               r.status == 422 and unchanged)
    except Exception as e:  # noqa: BLE001
        record(attack, "422", f"error: {e}", False)


def find_side_effect_link(mail_dir, timeout=40):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in sorted(os.listdir(mail_dir)) if os.path.isdir(mail_dir) else []:
            if not name.endswith(".eml"):
                continue
            with open(os.path.join(mail_dir, name), "rb") as f:
                msg = BytesParser(policy=policy.default).parse(f)
            for part in msg.walk():
                if part.get_content_type() != "text/plain":
                    continue
                text = part.get_content()
                m = re.search(r"Side effect:\s*(\S*/l/([A-Za-z0-9_\-=.%]+))", text)
                if m:
                    return "/l/" + m.group(2)
                # Fall back to the token's own words (base64url "v1|...|side_effect|...").
                for tok in re.findall(r"/l/([A-Za-z0-9_\-]+)", text):
                    raw = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))
                    if b"side_effect" in raw:
                        return "/l/" + tok
        time.sleep(0.5)
    return None


def check_i(a):
    attack = "i. used side-effect link posted again with stop=1"
    try:
        path = find_side_effect_link(os.path.join(a.data_dir, "mail"))
        if not path:
            record(attack, "'already used', trial running", "no side-effect link in mail/*.eml within 40 s", False)
            return
        page = a.get(path)
        fields = hidden_inputs(page.body)  # a csrf field, if the form has one
        r1 = a.post(path, dict(fields))
        r2 = a.post(path, dict(fields, stop="1"))
        status = trial_status(a)
        used = "already used" in r2.body.lower()
        record(attack, "2nd POST says 'already used', trial still running",
               f"GET {page.status}, 1st POST {r1.status}, 2nd POST {r2.status} "
               f"{'already used' if used else 'no already-used'}, trial {status}",
               used and status == "running")
    except Exception as e:  # noqa: BLE001
        record(attack, "already used", f"error: {e}", False)


def check_o(a, sockets=300, bound=40.0, within=20.0):
    """More stalled requests than web.max_connections (256): complete POST
    headers, then a body that never comes. Daemon A runs with
    request_timeout_seconds = 10 so the check stays short."""
    attack = f"o. {sockets} requests whose body never comes (cap 256)"
    socks, opened = [], time.monotonic()
    try:
        for _ in range(sockets):
            s = socket.create_connection(a.addr, timeout=5)
            s.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n")
            socks.append(s)
        time.sleep(1.0)
        t = time.monotonic()
        try:
            st = request(a.addr, "GET", "/healthz", timeout=bound).status
        except Exception as e:  # noqa: BLE001
            st = type(e).__name__
        waited = time.monotonic() - t
        record(attack, f"/healthz answered once the stalled ones time out (<= {within:.0f} s)",
               f"/healthz {st} after {waited:.1f} s", st == 200 and waited <= within)
    except Exception as e:  # noqa: BLE001
        record(attack, "/healthz answered", f"error: {e}", False)
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


def check_h(a, sockets=50, bound=30.0, within=20.0):
    attack = f"h. {sockets} slow-header connections"
    socks, opened = [], time.monotonic()
    try:
        for _ in range(sockets):
            s = socket.create_connection(a.addr, timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            s.setblocking(False)
            socks.append(s)
        open_ = {s.fileno(): s for s in socks}
        closed_at = {}
        health = []
        next_health = opened + 2.0
        while open_ and time.monotonic() - opened < bound:
            now = time.monotonic()
            if now >= next_health and len(health) < 3:
                t = time.monotonic()
                try:
                    st = request(a.addr, "GET", "/healthz", timeout=5).status
                except Exception as e:  # noqa: BLE001
                    st = type(e).__name__
                health.append((st, time.monotonic() - t))
                next_health = now + 5.0
            ready, _, _ = select.select(list(open_.values()), [], [], 0.2)
            for s in ready:
                try:
                    data = s.recv(4096)
                except (ConnectionResetError, BlockingIOError, OSError):
                    data = b""
                if not data:
                    closed_at[s.fileno()] = time.monotonic() - opened
                    del open_[s.fileno()]
        still = len(open_)
        worst = max(closed_at.values()) if closed_at else None
        healthy = bool(health) and all(st == 200 for st, _ in health)
        obs = f"{len(closed_at)} closed" + (f" (last at {worst:.1f} s)" if worst is not None else "")
        if still:
            obs += f", {still} still open at {bound:.0f} s"
        obs += "; /healthz " + ", ".join(f"{st} in {dt:.1f} s" for st, dt in health)
        record(attack, f"all closed by the server within ~15 s (<= {within:.0f}); /healthz 200 meanwhile",
               obs, still == 0 and worst is not None and worst <= within and healthy)
    except Exception as e:  # noqa: BLE001
        record(attack, "closed within ~15 s", f"error: {e}", False)
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


def mode_of(path):
    return os.stat(path).st_mode & 0o777


def check_l(a, nof1d, workdir):
    data = a.data_dir
    wants = [(data, 0o700, "data folder")]
    db = os.path.join(data, "nof1d.sqlite")
    for suffix in ("", "-wal", "-shm"):
        wants.append((db + suffix, 0o600, "nof1d.sqlite" + suffix))
    wants.append((os.path.join(data, "nof1d.lock"), 0o600, "nof1d.lock"))
    mail = os.path.join(data, "mail")
    if os.path.isdir(mail):
        wants.append((mail, 0o700, "mail/"))
        for n in sorted(os.listdir(mail)):
            if n.endswith(".eml"):
                wants.append((os.path.join(mail, n), 0o600, "mail/" + n))
    backup = os.path.join(workdir, "backup-umask022.sqlite")
    _, _, _, why, err = run_bounded(
        [nof1d, "backup", backup, "--data-dir", data], timeout=30,
        cwd=workdir, env=dict(os.environ, NOF1D_LOG="warn"), umask=0o022,
    )
    wants.append((backup, 0o600, "backup (nof1d backup, umask 022)"))
    bad, seen = [], 0
    for path, want, label in wants:
        if not os.path.exists(path):
            if label.startswith("backup"):
                bad.append(f"backup not written ({why or first_line(err)})")
            continue
        seen += 1
        m = mode_of(path)
        if m != want:
            bad.append(f"{label} {m:o}")
    record("l. modes under umask 022 (folder 0700, db/wal/shm/lock/eml/backup 0600)",
           "0700 / 0600", f"{seen} checked; " + ("all private" if not bad else "wrong: " + ", ".join(bad)[:300]),
           not bad and seen >= 5)


def check_m(a, workdir):
    attack = "m. restart on a zero-length nof1d.sqlite beside a non-empty -wal"
    try:
        rc = a.stop()
        db = os.path.join(a.data_dir, "nof1d.sqlite")
        wal = db + "-wal"
        made = ""
        if not os.path.exists(wal) or os.path.getsize(wal) == 0:
            with open(wal, "wb") as f:
                f.write(os.urandom(8192))
            made = " (non-empty -wal written by the check)"
        with open(wal, "rb") as f:
            sha_before = hashlib.sha256(f.read()).hexdigest()
        wal_size = os.path.getsize(wal)
        with open(db, "wb"):
            pass  # truncate to 0 bytes
        a.spawn()
        deadline = time.monotonic() + 15
        started = False
        while time.monotonic() < deadline and a.proc.poll() is None:
            addr = a.read_addr()
            if addr:
                try:
                    started = request(addr, "GET", "/healthz", timeout=2).status in (200, 503)
                except OSError:
                    pass
                if started:
                    break
            time.sleep(0.1)
        if a.proc.poll() is None:
            a.stop()
            exit_note = "started and served /healthz" if started else "still running after 15 s"
            refused = False
        else:
            refused = a.proc.returncode != 0
            a.log.close()
            exit_note = f"exit {a.proc.returncode}: {first_line(a.log_tail(2000).split('error:')[-1]) if refused else ''}"
        with open(wal, "rb") as f:
            sha_after = hashlib.sha256(f.read()).hexdigest()
        same = sha_before == sha_after
        record(attack, "non-zero exit with a message, -wal unchanged (sha256)",
               f"clean stop exit {rc}; -wal {wal_size} bytes{made}; {exit_note}; -wal {'unchanged' if same else 'CHANGED'}",
               refused and same)
    except Exception as e:  # noqa: BLE001
        record(attack, "refused", f"error: {e}", False)


# ---------------------------------------------------------------- daemon B


def login(b, password, nxt=None):
    page = b.get("/login")
    form = {"csrf": csrf_of(page.body) or "", "password": password}
    if nxt is not None:
        form["next"] = nxt
    return b.post("/login", form)


def check_g(b, password):
    attack = "g. old session cookie after POST /logout"
    try:
        r = login(b, password)
        cookie = cookies_of(r)
        if r.status != 303 or not cookie:
            record(attack, "401 / redirect to /login", f"could not sign in: HTTP {r.status}", False)
            return
        home = b.get("/", headers={"Cookie": cookie})
        csrf = csrf_of(home.body)
        out = b.post("/logout", {"csrf": csrf or ""}, headers={"Cookie": cookie})
        api = b.get("/api/status", headers={"Cookie": cookie})
        page = b.get("/", headers={"Cookie": cookie})
        loc = page.header("Location") or ""
        record(attack, "/api/status 401, / 303 to /login",
               f"signed in {home.status}, logout {out.status}, then /api/status {api.status}, / {page.status} {loc}".strip(),
               api.status == 401 and page.status in (302, 303) and loc.startswith("/login"))
    except Exception as e:  # noqa: BLE001
        record(attack, "401", f"error: {e}", False)


def check_j(b, password):
    evil = "/\t/evil.example"
    try:
        page = b.get("/login?next=" + urllib.parse.quote(evil, safe=""))
        nxt = hidden_inputs(page.body).get("next")
        record("j. GET /login?next=%2F%09%2Fevil.example: hidden next", "'/'",
               f"HTTP {page.status}, next={nxt!r}", nxt == "/")
    except Exception as e:  # noqa: BLE001
        record("j. GET /login?next=...: hidden next", "'/'", f"error: {e}", False)
    try:
        r = login(b, password, nxt=evil)
        loc = r.header("Location")
        record("j. POST /login (right password) next=%2F%09%2Fevil.example: Location", "'/'",
               f"HTTP {r.status}, Location={loc!r}", r.status == 303 and loc == "/")
    except Exception as e:  # noqa: BLE001
        record("j. POST /login next=...: Location", "'/'", f"error: {e}", False)


def check_d(b, n=40):
    attack = f"d. {n} parallel wrong passwords (valid csrf)"
    try:
        csrf = csrf_of(b.get("/login").body)
        barrier = threading.Barrier(n)
        codes = [None] * n

        def one(i):
            try:
                barrier.wait(10)
                codes[i] = b.post("/login", {"csrf": csrf, "password": f"wrong-{i}"}, timeout=60).status
            except Exception as e:  # noqa: BLE001
                codes[i] = type(e).__name__

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        c401 = codes.count(401)
        c429 = codes.count(429)
        other = n - c401 - c429
        record(attack, "at most 5 answered 401, the rest 429",
               f"{c401}x401, {c429}x429" + (f", {other} other {sorted(set(map(str, codes)) - {'401', '429'})}" if other else ""),
               c401 <= 5 and c401 + c429 == n)
    except Exception as e:  # noqa: BLE001
        record(attack, "<= 5 401", f"error: {e}", False)


def check_d_persist(b):
    attack = "d. wrong password right after a restart"
    try:
        b.stop()
        b.start()
        csrf = csrf_of(b.get("/login").body)
        r = b.post("/login", {"csrf": csrf, "password": "still-wrong"})
        record(attack, "429 (the lock-out survives the restart)", f"HTTP {r.status}", r.status == 429)
    except Exception as e:  # noqa: BLE001
        record(attack, "429", f"error: {e}", False)


def check_e(b, right_token, n=20):
    attack = f"e. {n} wrong bearer tokens on /api/status, then the right one"
    try:
        codes = []
        for i in range(n):
            codes.append(b.get("/api/status", headers={"Authorization": f"Bearer {secrets.token_hex(32)}"}).status)
        runs, prev = [], None
        for c in codes:
            if c == prev:
                runs[-1][1] += 1
            else:
                runs.append([c, 1])
            prev = c
        seq = " ".join(f"{c}x{k}" for c, k in runs)
        right = b.get("/api/status", headers={"Authorization": f"Bearer {right_token}"}).status
        record(attack, "at most 5 answered 401, the rest 429; the right token still 200",
               f"{seq}; right token {right}",
               codes.count(401) <= 5 and codes[-1] == 429 and right == 200)
    except Exception as e:  # noqa: BLE001
        record(attack, "429", f"error: {e}", False)


# ---------------------------------------------------------------- no daemon


def check_f(nof1d, workdir):
    attack = "f. serve with web.token = 'x' (1 char) on 0.0.0.0:0"
    data = os.path.join(workdir, "f-data")
    cfg = os.path.join(workdir, "f.toml")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{data}"\n[web]\nlisten = "0.0.0.0:0"\ntoken = {{ env = "{TOKEN_ENV}" }}\n'
                "[jobs]\ncalibrate = false\n")
    env = dict(os.environ, **{TOKEN_ENV: "x"})
    env.pop("NOF1D_LOG", None)
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen([nof1d, "--config", cfg, "serve"], cwd=workdir, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                             start_new_session=True)
        deadline = time.monotonic() + 10
        started = False
        while p.poll() is None and time.monotonic() < deadline:
            if os.path.exists(os.path.join(data, "listen.addr")):
                started = True
                break
            time.sleep(0.05)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            record(attack, "refuses to start: non-zero exit, message names the token",
                   "started and listened (stopped by the check)" if started else "still running after 10 s", False)
            return
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    msg = first_line(text.split("error:")[-1])
    record(attack, "refuses to start: non-zero exit, message names the token",
           f"exit {p.returncode}: {msg}", p.returncode != 0 and "token" in text.lower())


def check_n(nof1d, workdir):
    protocol = os.path.join(REPO, "protocols", "meditation-anxiety.toml")
    env = dict(os.environ, NOF1D_LOG="warn")
    cases = [
        ("n. simulate --trials 1000000000",
         [nof1d, "simulate", "--protocol", protocol, "--trials", "1000000000", "--threads", "1",
          "--out", os.path.join(workdir, "sim-huge.json")]),
        ("n. simulate --effect NaN",
         [nof1d, "simulate", "--protocol", protocol, "--effect", "NaN", "--trials", "10", "--threads", "1",
          "--out", os.path.join(workdir, "sim-nan.json")]),
        ("n. protocol check /dev/zero", [nof1d, "protocol", "check", "/dev/zero"]),
    ]
    for attack, cmd in cases:
        try:
            rc, dt, peak, why, err = run_bounded(cmd, timeout=5, max_rss_mib=1024, cwd=workdir, env=env)
            if why:
                obs = f"killed: {why} (peak RSS {peak:.0f} MiB)"
                ok = False
            else:
                obs = f"exit {rc} in {dt:.1f} s, peak RSS {peak:.0f} MiB: {first_line(err.split('error:')[-1], 80)}"
                # A refusal is an ordinary error exit (1, 2), not a signal or an abort.
                ok = rc is not None and rc > 0 and dt <= 5 and peak < 256
            record(attack, "refused: error exit within 5 s, bounded memory", obs, ok)
        except Exception as e:  # noqa: BLE001
            record(attack, "refused", f"error: {e}", False)


# ---------------------------------------------------------------- main


def print_table():
    rows = [("attack", "expected", "observed", "result")]
    rows += [(a, e, o, "PASS" if ok else "FAIL") for a, e, o, ok in RESULTS]
    print()
    for a, e, o, r in rows:
        print(f"| {a} | {e} | {o} | {r} |")
        if r == "result":
            print("| --- | --- | --- | --- |")
    fails = sum(1 for *_, ok in RESULTS if not ok)
    print(f"\n{len(RESULTS) - fails} passed, {fails} failed")
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nof1d", default=os.path.join(REPO, "target", "release", "nof1d"))
    ap.add_argument("--only", default="abcdefghijklmno", help="letters of the attacks to run, e.g. a,b,h")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    args = ap.parse_args()
    nof1d = os.path.abspath(args.nof1d)
    if not os.access(nof1d, os.X_OK):
        sys.exit(f"not an executable: {nof1d}")
    only = set(args.only.replace(",", ""))
    work = tempfile.mkdtemp(prefix="nof1d-attacks-")
    started = time.monotonic()
    daemons = []
    print(f"nof1d: {nof1d}\nwork folder: {work}", flush=True)
    try:
        if only & set("abchiklmo"):
            print("daemon A (demo, open, loopback, umask 022) ...", flush=True)
            os.makedirs(os.path.join(work, "a"), mode=0o755)
            a_data = os.path.join(work, "a", "data")  # the daemon creates it
            a = Daemon(nof1d, work, "A", (
                f'data_dir = "{a_data}"\n'
                '[web]\nlisten = "127.0.0.1:0"\nrequest_timeout_seconds = 10\n'
                "[jobs]\noutbox_seconds = 1\nassignment_check_seconds = 1\n"
                "calibrate = false\ndesign_seconds = 3600\n"
                f'[clock]\nstart = "{PINNED_START}"\n'
            ), a_data, extra=["--demo"], umask=0o022)
            daemons.append(a)
            a.start()
            if "c" in only:
                check_c(a)
            if only & set("ab"):
                check_a_b(a)
            if "k" in only:
                check_k(a)
            if "o" in only:
                check_o(a)
            if "i" in only:
                check_i(a)
            if "h" in only:
                check_h(a)
            if "l" in only:
                find_side_effect_link(os.path.join(a_data, "mail"), timeout=20)  # an .eml to stat
                check_l(a, nof1d, work)
            if "m" in only:
                check_m(a, work)
            a.stop()
        if only & set("degj"):
            print("daemon B (password + token, loopback) ...", flush=True)
            password = "attack-" + secrets.token_hex(8)
            out = subprocess.run([nof1d, "hash-password"], input=password + "\n", capture_output=True,
                                 text=True, timeout=30)
            phc = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
            if not phc.startswith("$argon2"):
                raise RuntimeError(f"hash-password failed: {out.stderr.strip()}")
            b_data = os.path.join(work, "b-data")
            b_token = secrets.token_hex(32)
            b = Daemon(nof1d, work, "B", (
                f'data_dir = "{b_data}"\n'
                f'[web]\nlisten = "127.0.0.1:0"\npassword_hash = "{phc}"\n'
                f'token = {{ env = "{TOKEN_ENV}" }}\n'
                "[jobs]\ncalibrate = false\n"
            ), b_data, env={TOKEN_ENV: b_token})
            daemons.append(b)
            b.start()
            # Right passwords first: d and e lock this address out.
            if "g" in only:
                check_g(b, password)
            if "j" in only:
                check_j(b, password)
            if "d" in only:
                check_d(b)
                check_d_persist(b)
            if "e" in only:
                check_e(b, b_token)
            b.stop()
        if "f" in only:
            check_f(nof1d, work)
        if "n" in only:
            check_n(nof1d, work)
    except Exception as e:  # noqa: BLE001
        record("harness", "runs", f"error: {e}", False)
    finally:
        for d in daemons:
            try:
                d.stop(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nwall time {time.monotonic() - started:.1f} s")
    sys.exit(1 if print_table() else 0)


if __name__ == "__main__":
    main()
