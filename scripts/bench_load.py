#!/usr/bin/env python3
"""The API under load while runs are live.

Starts `loads serve` on loopback with a fresh SQLite database and starts 3 runs
of a plan with a 40 s step and a step due 20 s after the run's start. While they
run: 200 websocket subscribers on the first run's feed, and `wrk` (Debian)
against the read API (GET /api/v1/runs/{id}, then GET /api/v1/runs). Reports
wrk's throughput, latency and errors, and checks that every subscriber got
every event (consecutive numbers from its snapshot to the run's end, the same
last number for all) and that the runs' schedules were kept (the late step
started 20 s after its run, within a second).
Usage: scripts/bench_load.py [--binary PATH] [--subscribers 200] [--seconds 15]
Needs: wrk (apt-get install wrk), PyPI websockets.
"""
import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time

import websockets

from bench_start import call, start_broker, ts


async def subscribe(url, results, index):
    """Reads one feed (from its first event: no `since`) to its end; records (first seq, last seq, gaps, ended)."""
    gaps, first, last, ended = 0, None, 0, False
    async with websockets.connect(url, max_size=None, open_timeout=60, ping_interval=None) as ws:
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "snapshot":
                continue
            if event["type"] == "end":
                ended = True
                break
            if event["type"] == "closed":
                break
            if event["seq"] != last + 1:
                gaps += 1
            first = event["seq"] if first is None else first
            last = event["seq"]
    results[index] = (first, last, gaps, ended)


def wrk(url, seconds):
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+\w+)", out).group(1)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out).group(1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"requests": total, "rps": rps, "p50": p50, "p99": p99, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else "none"}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "loads"))
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=15)
    args = ap.parse_args()

    server, base = start_broker(args.binary, "load", 19000)
    try:
        project = call(base, "POST", "/api/v1/projects", {"name": "load", "plans": [{"name": "p", "steps": [
            {"name": "hold", "container_name": "loads/busybox:1", "instance_count": 2,
             "additional_command_args": "-c 'sleep 40'", "run_max_time": 0},
            {"name": "late", "container_name": "loads/busybox:1", "run_delay": 20,
             "additional_command_args": "-c 'echo late'"}]}]})
        plan_id = project["plans"][0]["id"]
        runs = [call(base, "POST", f"/api/v1/plans/{plan_id}/runs", {})["id"] for _ in range(3)]
        while any(call(base, "GET", f"/api/v1/runs/{r}")["state"] != "running" for r in runs):
            time.sleep(0.2)
        url = f"{base.replace('http://', 'ws://')}/api/v1/runs/{runs[0]}/events"
        results = [None] * args.subscribers
        feeds = asyncio.gather(*(subscribe(url, results, i) for i in range(args.subscribers)))
        loop = asyncio.get_running_loop()
        one = await loop.run_in_executor(None, wrk, f"{base}/api/v1/runs/{runs[0]}", args.seconds)
        many = await loop.run_in_executor(None, wrk, f"{base}/api/v1/runs", args.seconds)
        await asyncio.wait_for(feeds, timeout=300)
        finished = []
        for r in runs:
            while True:
                run = call(base, "GET", f"/api/v1/runs/{r}")
                if run["state"] in ("completed", "failed", "aborted"):
                    finished.append(run)
                    break
                time.sleep(0.2)
        print(f"wrk GET /api/v1/runs/{{id}}: {one}")
        print(f"wrk GET /api/v1/runs:      {many}")
        lasts = {res[1] for res in results}
        gaps = sum(res[2] for res in results)
        ended = sum(1 for res in results if res[3])
        print(f"subscribers: {args.subscribers}, ended normally {ended}, gaps {gaps}, last seq {sorted(lasts)}")
        ok = ended == args.subscribers and gaps == 0 and len(lasts) == 1 and one["non_2xx"] == 0 and many["non_2xx"] == 0
        for run in finished:
            late = next(s for s in run["step_records"] if s["step_name"] == "late")
            offset = (ts(late["started_at"]) - ts(run["started_at"])).total_seconds()
            print(f"run {run['id'][:8]}: {run['state']}, late step started {offset:.2f}s after the run (planned 20)")
            ok = ok and run["state"] == "completed" and abs(offset - 20) < 1.0
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
