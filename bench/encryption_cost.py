#!/usr/bin/env python3
"""What encryption at rest (database.key, SQLCipher) costs, plain vs keyed.

Starts the demo daemon twice on loopback, once on a plain database and once
on an encrypted one (fresh data folders, the same pinned clock), and times:

- start: `nof1d serve` until /healthz answers (keying derives the key with
  PBKDF2 once per connection: the daemon opens two);
- dashboard: sequential GETs of /trials/1 (the heaviest page: schedule,
  fits, decisions, charts) and /api/status; median and 95th percentile;
- refit path: `nof1d report 1 --sim-trials 0` after the daemon stopped, which
  opens the database, loads the trial's stored rows and fits its model
  (what the refits job does, plus rendering); median of runs;
- open: `nof1d trial list`, which opens the database and runs one query:
  with a key, most of it is the key derivation (PBKDF2-HMAC-SHA512, 256,000
  iterations), paid once per connection, not per query;
- backup: `nof1d backup` of the whole database (two keyed connections).

The demo's database (~200 KB) fits SQLite's page cache, so the steady-state
figures show the cost once pages are decrypted; each page read from disk is
decrypted (AES-256-CBC) and checked (HMAC-SHA512) once per cache miss.

Usage: bench/encryption_cost.py [--nof1d target/release/nof1d] [--requests 300] [--runs 5]
"""
import argparse, json, os, shutil, statistics, subprocess, tempfile, time, urllib.request

PINNED = "2026-11-25T12:00:00Z"
KEY = "0d4c9be2a17f5e8830b6c2f4a9e1d7c5b3a8f6e2d4c1b9a7"


def get(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
        assert r.status == 200, (url, r.status)
    return time.perf_counter() - t


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(nof1d, keyed, requests, runs):
    root = tempfile.mkdtemp(prefix=f"nof1d-enc-{'keyed' if keyed else 'plain'}-")
    data = os.path.join(root, "data")
    os.makedirs(data)
    key_file = os.path.join(root, "key")
    with open(key_file, "w") as f:
        f.write(KEY + "\n")
    cfg = os.path.join(root, "nof1d.toml")
    with open(cfg, "w") as f:
        if keyed:
            f.write(f'[database]\nkey = {{ file = "{key_file}" }}\n')
        f.write(f'[jobs]\ncalibrate = false\n[clock]\nstart = "{PINNED}"\n')
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [nof1d, "--config", cfg, "serve", "--demo", "--data-dir", data, "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "log"), "w"))
    addr_file = os.path.join(data, "listen.addr")
    base = None
    while time.perf_counter() - t0 < 60:
        try:
            base = "http://" + open(addr_file).read().strip()
            get(base + "/healthz")
            break
        except Exception:
            time.sleep(0.01)
    start_s = time.perf_counter() - t0
    # Let the first job runs (fits, the day's email) finish.
    while True:
        h = json.load(urllib.request.urlopen(base + "/healthz"))
        if all(h["jobs"][j]["runs"] >= 1 for j in ("sources", "refits", "assignments", "outbox")):
            break
        time.sleep(0.05)
    for _ in range(20):
        get(base + "/trials/1")
    page = [get(base + "/trials/1") for _ in range(requests)]
    status = [get(base + "/api/status") for _ in range(requests)]
    proc.terminate()
    proc.wait(timeout=60)
    report = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([nof1d, "--config", cfg, "report", "1", "--sim-trials", "0", "--data-dir", data],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report.append(time.perf_counter() - t)
    listing = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([nof1d, "--config", cfg, "trial", "list", "--data-dir", data],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listing.append(time.perf_counter() - t)
    backup = []
    for i in range(runs):
        out = os.path.join(root, f"backup-{i}.sqlite")
        t = time.perf_counter()
        subprocess.run([nof1d, "--config", cfg, "backup", out, "--data-dir", data],
                       check=True, stdout=subprocess.DEVNULL)
        backup.append(time.perf_counter() - t)
    size = os.path.getsize(os.path.join(data, "nof1d.sqlite"))
    shutil.rmtree(root)
    ms = lambda x: round(1000 * x, 2)
    return {
        "start_ms": ms(start_s),
        "trial_page_ms": {"median": ms(statistics.median(page)), "p95": ms(pct(page, 0.95))},
        "api_status_ms": {"median": ms(statistics.median(status)), "p95": ms(pct(status, 0.95))},
        "report_refit_ms": ms(statistics.median(report)),
        "open_and_list_ms": ms(statistics.median(listing)),
        "backup_ms": ms(statistics.median(backup)),
        "db_bytes": size,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nof1d", default="target/release/nof1d")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    plain = measure(a.nof1d, False, a.requests, a.runs)
    keyed = measure(a.nof1d, True, a.requests, a.runs)
    print(json.dumps({"plain": plain, "encrypted": keyed}, indent=2))
    print("\n| path | plain | encrypted | ratio |\n| --- | --- | --- | --- |")
    rows = [
        ("daemon start to /healthz (ms)", plain["start_ms"], keyed["start_ms"]),
        ("GET /trials/1 median (ms)", plain["trial_page_ms"]["median"], keyed["trial_page_ms"]["median"]),
        ("GET /trials/1 p95 (ms)", plain["trial_page_ms"]["p95"], keyed["trial_page_ms"]["p95"]),
        ("GET /api/status median (ms)", plain["api_status_ms"]["median"], keyed["api_status_ms"]["median"]),
        ("nof1d trial list: open (key derivation) + one query, median (ms)", plain["open_and_list_ms"], keyed["open_and_list_ms"]),
        ("nof1d report (open + load + refit) median (ms)", plain["report_refit_ms"], keyed["report_refit_ms"]),
        ("nof1d backup median (ms)", plain["backup_ms"], keyed["backup_ms"]),
    ]
    for name, p, k in rows:
        print(f"| {name} | {p} | {k} | {k / p:.2f} |")


if __name__ == "__main__":
    main()
