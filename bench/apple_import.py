#!/usr/bin/env python3
"""Apple Health import: how fast nof1d reads and stores a large export.xml,
its peak memory, and the same file through the Python `healthkit-to-sqlite`
package (PyPI) for comparison.

    python3 bench/apple_import.py --nof1d target/release/nof1d [--mb 2000] [--compare-mb 200]

Steps (each timed with /usr/bin/time -v for wall time and peak RSS):
1. `nof1d bench apple-export` writes an export shaped like iOS 16+'s (minute
   heart rate, steps from two devices, sleep stages, workouts...) of about
   --mb megabytes.
2. `nof1d bench apple-parse FILE`: parsed only (MB/s).
3. `nof1d import FILE` into a fresh data folder: parsed and stored (MB/s).
4. `nof1d import FILE` again: the re-import adds nothing.
5. A --compare-mb file, its DTD removed (healthkit-to-sqlite cannot read
   iOS 16+'s broken DTD), through both tools; the ratio of their times.
"""
import argparse, json, os, re, shutil, socket, subprocess, sys, tempfile, time

BYTES_PER_DAY = 520_000  # measured: one day at one-minute heart rate


def timed(cmd, cwd):
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    h, m, s = wall.groups()
    seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return out.stdout, seconds, rss / 1024


def fresh_data(nof1d, work, name):
    data = os.path.join(work, name)
    port = socket.socket(); port.bind(("127.0.0.1", 0)); addr = port.getsockname(); port.close()
    p = subprocess.Popen([nof1d, "serve", "--demo", "--data-dir", data, "--listen", f"127.0.0.1:{addr[1]}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(os.path.join(data, "listen.addr")):
            break
        time.sleep(0.1)
    time.sleep(1)
    p.terminate(); p.wait()
    return data


def strip_dtd(src, dst, limit):
    with open(src, "rb") as f, open(dst, "wb") as g:
        head = f.read(1 << 16)
        start = head.index(b"<!DOCTYPE")
        end = head.index(b"]>", start) + 2
        g.write(head[:start] + head[end:])
        copied = len(head)
        while copied < limit:
            block = f.read(1 << 20)
            if not block:
                break
            g.write(block)
            copied += len(block)
        # End on a whole record, then close the root.
    with open(dst, "rb+") as g:
        g.seek(0, 2); size = g.tell(); g.seek(max(0, size - (1 << 20)))
        tail = g.read(); cut = tail.rfind(b"\n <Record")
        g.seek(size - len(tail) + cut); g.truncate(); g.write(b"\n</HealthData>\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nof1d", default="target/release/nof1d")
    ap.add_argument("--mb", type=int, default=2000)
    ap.add_argument("--compare-mb", type=int, default=200)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    nof1d = os.path.abspath(a.nof1d)
    work = a.work or tempfile.mkdtemp(prefix="nof1d-apple-")
    os.makedirs(work, exist_ok=True)
    big = os.path.join(work, "export.xml")
    days = max(1, a.mb * 1_000_000 // BYTES_PER_DAY)
    _, gen_s, _ = timed([nof1d, "bench", "apple-export", "--days", str(days), "--hr-minutes", "1", "--out", big], work)
    size = os.path.getsize(big)
    print(f"export.xml: {size/1e6:.0f} MB ({days} days), written in {gen_s:.1f} s")
    out, parse_s, parse_rss = timed([nof1d, "bench", "apple-parse", big], work)
    parsed = json.loads(out)
    print(f"parse only: {parse_s:.1f} s, {size/1e6/parse_s:.0f} MB/s, {parsed['records']} records, "
          f"{parsed['observations']} observations, peak RSS {parse_rss:.0f} MB")
    data = fresh_data(nof1d, work, "data")
    out, store_s, store_rss = timed([nof1d, "import", "--participant", "demo", "--data-dir", data, big], work)
    print(f"parse + store: {store_s:.1f} s, {size/1e6/store_s:.0f} MB/s, peak RSS {store_rss:.0f} MB\n  {out.strip()}")
    out, again_s, again_rss = timed([nof1d, "import", "--participant", "demo", "--data-dir", data, big], work)
    print(f"re-import: {again_s:.1f} s, {size/1e6/again_s:.0f} MB/s, peak RSS {again_rss:.0f} MB\n  {out.strip()}")
    db = os.path.join(data, "nof1d.sqlite")
    print(f"database: {os.path.getsize(db)/1e6:.0f} MB")
    if a.compare_mb > 0 and shutil.which("healthkit-to-sqlite"):
        small = os.path.join(work, "compare.xml")
        strip_dtd(big, small, a.compare_mb * 1_000_000)
        csize = os.path.getsize(small)
        data2 = fresh_data(nof1d, work, "data2")
        out, n_s, n_rss = timed([nof1d, "import", "--participant", "demo", "--data-dir", data2, small], work)
        hk_db = os.path.join(work, "healthkit.db")
        _, p_s, p_rss = timed(["healthkit-to-sqlite", "--xml", small, hk_db, "--silent"], work)
        print(f"comparison on {csize/1e6:.0f} MB (DTD removed for the Python tool):")
        print(f"  nof1d import:        {n_s:6.1f} s  {csize/1e6/n_s:6.1f} MB/s  peak RSS {n_rss:.0f} MB")
        print(f"  healthkit-to-sqlite: {p_s:6.1f} s  {csize/1e6/p_s:6.1f} MB/s  peak RSS {p_rss:.0f} MB")
        print(f"  ratio (Python time / nof1d time): {p_s/n_s:.1f}")
    elif a.compare_mb > 0:
        print("healthkit-to-sqlite not installed (pip install healthkit-to-sqlite): comparison skipped")


if __name__ == "__main__":
    main()
