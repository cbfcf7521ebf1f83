"""Load on `charrnn serve`'s next-character endpoint, over loopback only.

Starts `python -m charrnn serve RUN --port 0` on 127.0.0.1, then CLIENTS threads, each with one
keep-alive connection, POST /api/probs for SECONDS: a text that grows by one character per
request, as typing does (a slice of TEXT, restarting at its end). Reports p50/p99/max latency of
the 200 answers, the count of answers by status, requests per second and the server's resident
memory (VmRSS) before and after. Bounded: stops at the deadline, sends nothing but to the
server it started on 127.0.0.1, and stops that server with Ctrl-C (SIGINT).

    python benchmarks/serve_load.py RUN [--clients 50] [--seconds 30] [--text FILE] [--json]
"""
import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

DEFAULT_TEXT = ("'I think that at that time none of us quite believed in the Time Machine,' said the "
                "Psychologist. 'The fact is, the Time Traveller was one of those men who are too clever "
                "to be believed: you never felt that you saw all round him.'\n") * 4


def rss_kib(pid) -> int:
    """The process' resident memory in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def start_server(run):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "charrnn", "--threads", "1", "serve", str(run),
                                "--host", "127.0.0.1", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if "http://127.0.0.1:" not in line:
        process.kill()
        sys.exit(f"the server did not start: {line.strip()} {process.stderr.read().strip()}")
    return process, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def client(port, text, offset, deadline, latencies, statuses, lock):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    k = offset
    mine, counts = [], Counter()
    while time.monotonic() < deadline:
        k = k % len(text) + 1
        body = json.dumps({"text": text[:k], "top": 10}).encode()
        start = time.perf_counter()
        try:
            conn.request("POST", "/api/probs", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as err:
            status = f"connection error ({type(err).__name__})"
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        elapsed = time.perf_counter() - start
        counts[status] += 1
        if status == 200:
            mine.append(elapsed)
    conn.close()
    with lock:
        latencies.extend(mine)
        statuses.update(counts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory or .npz checkpoint")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--text", type=Path, default=None, help="UTF-8 text the clients type (default: a paragraph)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    if not (1 <= args.clients <= 200 and 0 < args.seconds <= 120):
        sys.exit("--clients must be within 1..200 and --seconds within (0, 120]")
    text = args.text.read_text(encoding="utf-8")[:2000] if args.text else DEFAULT_TEXT
    process, port = start_server(args.run)
    try:
        time.sleep(0.5)
        before = rss_kib(process.pid)
        latencies, statuses, lock = [], Counter(), threading.Lock()
        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=client, args=(port, text, 37 * i, deadline, latencies, statuses, lock))
                   for i in range(args.clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.seconds + 60)
        wall = time.monotonic() - started
        after = rss_kib(process.pid)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    ms = np.array(latencies) * 1e3
    report = {"clients": args.clients, "seconds": round(wall, 2), "requests": sum(statuses.values()),
              "per_second": round(sum(statuses.values()) / wall, 1),
              "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
              "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
              "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
              "max_ms": round(float(ms.max()), 2) if len(ms) else None,
              "rss_before_mib": round(before / 1024, 1), "rss_after_mib": round(after / 1024, 1)}
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:>15}: {value}")


if __name__ == "__main__":
    main()
