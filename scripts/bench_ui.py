#!/usr/bin/env python3
"""The web UI's cost: the run page's time to first chart, and the broker's CPU
with many run pages open on one live run.

Starts `loads serve` on loopback with a fresh SQLite database and one live run:
a generator step that sends a timing and a counter 20 times a second for
`--seconds`. A headless Chromium (Debian's `chromium`, through `chromedriver`
and plain WebDriver requests) opens `/runs/{id}`; the time to first chart is
from the navigation's start to the first moment (polled every 20 ms) the
step's latency chart holds points: page, scripts, plotly.js, the run, its
stored series, the feed, the first render. Repeated `--repeat` times with the
browser's cache cleared. Then `--pages` tabs open the same run page, and the
broker's CPU (its process's user + system time from /proc) is measured over
`--window` seconds, against the same window with no page open.
Usage: scripts/bench_ui.py [--binary PATH] [--pages 50] [--repeat 5] [--window 20] [--seconds 150]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request

from bench_start import call, start_broker

GENERATOR = ("i=0; while [ $i -lt {n} ]; do printf \"lat:$((i % 50 + 5))|ms\\nreqs:1|c\\n\" | nc $STATSD_HOST $STATSD_PORT; "
             "usleep 50000; i=$((i+1)); done")


def webdriver(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")["value"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "loads"))
    ap.add_argument("--pages", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=150)
    args = ap.parse_args()

    server, base = start_broker(args.binary, "ui", 21000)
    port = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wd = f"http://127.0.0.1:{port}"
    run_id = None
    try:
        project = call(base, "POST", "/api/v1/projects", {"name": "ui-bench"})
        generator = GENERATOR.format(n=args.seconds * 20).replace("$", "$$")
        plan = call(base, "POST", f"/api/v1/projects/{project['id']}/plans", {
            "name": "ui-bench",
            "steps": [{"name": "gen", "container_name": "loads/busybox:1", "run_max_time": args.seconds + 30,
                       "additional_command_args": f"-c '{generator}'"}]})
        run_id = call(base, "POST", f"/api/v1/plans/{plan['id']}/runs", {})["id"]
        for _ in range(300):
            run = call(base, "GET", f"/api/v1/runs/{run_id}")
            if run["step_records"][0]["state"] == "running":
                break
            time.sleep(0.2)
        time.sleep(5)  # a few seconds of stored series for the page to read back

        for _ in range(100):
            try:
                webdriver(wd, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync"]}}}}
        session = webdriver(wd, "POST", "/session", caps)["sessionId"]
        s = f"/session/{session}"
        ready = ("const c = document.querySelector('section.step[data-step=\"gen\"] [data-chart=latency]'); "
                 "return [performance.now(), c ? Number(c.dataset.points || 0) : 0]")
        firsts = []
        for _ in range(args.repeat):
            webdriver(wd, "POST", f"{s}/url", {"url": "about:blank"})
            # The browser's cache goes, so every load fetches the page, the scripts and plotly.js again.
            webdriver(wd, "POST", f"{s}/goog/cdp/execute", {"cmd": "Network.clearBrowserCache", "params": {}})
            webdriver(wd, "POST", f"{s}/url", {"url": f"{base}/runs/{run_id}"})
            for _ in range(1500):
                at, points = webdriver(wd, "POST", f"{s}/execute/sync", {"script": ready, "args": []})
                if points > 0:
                    firsts.append(at)
                    break
                time.sleep(0.02)
            else:
                raise SystemExit("the latency chart got no points within 30 s")

        before = cpu_seconds(server.pid)
        time.sleep(args.window)
        idle = (cpu_seconds(server.pid) - before) / args.window * 100
        for _ in range(args.pages - 1):
            webdriver(wd, "POST", f"{s}/window/new", {"type": "tab"})
        handles = webdriver(wd, "GET", f"{s}/window/handles")
        for h in handles:
            webdriver(wd, "POST", f"{s}/window", {"handle": h})
            webdriver(wd, "POST", f"{s}/url", {"url": f"{base}/runs/{run_id}"})
        time.sleep(5)
        before = cpu_seconds(server.pid)
        time.sleep(args.window)
        busy = (cpu_seconds(server.pid) - before) / args.window * 100
        run = call(base, "GET", f"/api/v1/runs/{run_id}")
        if run["completed_at"]:
            raise SystemExit("the run ended before the measurement did: raise --seconds")
        print(f"time to first chart (ms), {args.repeat} loads, cache cleared: median {statistics.median(firsts):.0f}, "
              f"min {min(firsts):.0f}, max {max(firsts):.0f}")
        print(f"broker CPU over {args.window} s (% of one core): no page {idle:.1f}, {len(handles)} run pages {busy:.1f}")
        webdriver(wd, "DELETE", s)
    finally:
        if run_id:
            call(base, "POST", f"/api/v1/runs/{run_id}/abort", {})
            for _ in range(300):
                if call(base, "GET", f"/api/v1/runs/{run_id}")["completed_at"]:
                    break
                time.sleep(0.2)
        driver.kill()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
