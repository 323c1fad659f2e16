#!/usr/bin/env python3
"""The broker's and a relay's memory through the floods careless or hostile
generators make.

For each flood it starts `loads serve` on loopback with a fresh SQLite database
(`--binary`, the `loads` to measure: one built from an older commit gives the
figures before), so no flood inherits another's heap, and runs one one-step
plan on the local provider:
  ids          a timer named after each request (a request id in the name),
               100 new names a second for 60 s;
  thresholds   200 thresholds `p(95)<N` over a one-hour window on one timer,
               10 samples a second for 45 s;
  subscribers  300 websocket subscribers that never read, on a step whose
               windows hold 200 names, for 45 s.
For each it prints the broker's RSS before and its peak (VmRSS sampled every
0.5 s) and, for `ids`, the peak memory of the node's relay container (its
cgroup's high-water mark), then the run's state and verdict.
Usage: scripts/bench_floods.py [--binary PATH] [--floods ids thresholds subscribers]
"""
import argparse
import os
import socket
import subprocess
import threading
import time

from bench_memory import rss_kib
from bench_start import call, start_broker

IDS = ("i=0; while [ $i -lt 60 ]; do j=0; while [ $j -lt 100 ]; do echo \"req.$((i*100+j)).lat:12|ms\"; j=$((j+1)); done "
       "| nc -w 1 $STATSD_HOST $STATSD_PORT; i=$((i+1)); sleep 1; done; sleep 2")
TIMER = ("i=0; while [ $i -lt 45 ]; do j=0; while [ $j -lt 10 ]; do echo \"lat:$((100 + (i * 10 + j) % 100))|ms\"; j=$((j+1)); done "
         "| nc -w 1 $STATSD_HOST $STATSD_PORT; i=$((i+1)); sleep 1; done")
NAMES = ("i=0; while [ $i -lt 70 ]; do j=0; while [ $j -lt 200 ]; do echo \"c$j.requests:1|c\"; j=$((j+1)); done "
         "| nc -w 1 $STATSD_HOST $STATSD_PORT; i=$((i+1)); sleep 1; done")


def step(script):
    """A busybox step running `script` (its `$` escaped from the plan's own `$VAR`s)."""
    escaped = script.replace("$", "$$")
    return {"name": "gen", "container_name": "loads/busybox:1", "additional_command_args": f"-c '{escaped}'", "run_max_time": 120}


def relay_peak_mib(run_id):
    ids = subprocess.run(["docker", "ps", "-q", "--no-trunc", "--filter", f"label=loads.run={run_id}", "--filter", "label=loads.role=relay"],
                         capture_output=True, text=True).stdout.split()
    for full in ids:
        for path in (f"/sys/fs/cgroup/memory/docker/{full}/memory.max_usage_in_bytes", f"/sys/fs/cgroup/system.slice/docker-{full}.scope/memory.peak"):
            try:
                with open(path) as f:
                    return int(f.read()) / 1048576
            except OSError:
                pass
    return None


def silent_subscriber(base, run_id, holders):
    """Opens the run's websocket feed and never reads from it."""
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall((f"GET /api/v1/runs/{run_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    holders.append(s)


def flood(base, server, name, plan, during=None):
    project = call(base, "POST", "/api/v1/projects", {"name": f"flood-{name}-{os.getpid()}", "plans": [plan]})
    run = call(base, "POST", f"/api/v1/plans/{project['plans'][0]['id']}/runs", {})
    before = rss_kib(server.pid) / 1024
    peak, relay, done = before, None, threading.Event()

    def sample():
        nonlocal peak, relay
        while not done.is_set():
            peak = max(peak, rss_kib(server.pid) / 1024)
            relay = relay_peak_mib(run["id"]) or relay
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    if during:
        during(run["id"])
    # The run's end, or how long the API stopped answering (a broker out of breath answers 503 or nothing).
    started, finished, failed_at, failures = time.time(), None, None, 0
    while finished is None and time.time() - started < 300:
        try:
            got = call(base, "GET", f"/api/v1/runs/{run['id']}")
            if got["state"] in ("completed", "failed", "aborted"):
                finished = got
        except OSError as e:
            failures += 1
            failed_at = failed_at or (time.time() - started, str(e))
        time.sleep(0.5)
    done.set()
    sampler.join()
    relay_text = f", relay peak {relay:.0f} MiB" if relay else ""
    ending = f"run {finished['state']}, verdict {finished['verdict']}" if finished else "run not over after 300 s"
    if failed_at:
        ending += f"; the API failed {failures} time(s), first {failed_at[0]:.0f} s in: {failed_at[1]}"
    print(f"{name:12} broker {before:.0f} MiB before, peak {peak:.0f} MiB{relay_text}; {ending}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "loads"))
    parser.add_argument("--floods", nargs="+", default=["ids", "thresholds", "subscribers"])
    args = parser.parse_args()
    for name in args.floods:
        server, base = start_broker(args.binary, f"floods{name}", 19300)
        try:
            if name == "ids":
                flood(base, server, name, {"name": "p", "steps": [step(IDS)]})
            elif name == "thresholds":
                rules = [{"threshold": f"p(95)<{100 + i}", "window": "1h"} for i in range(200)]
                flood(base, server, name, {"name": "p", "steps": [step(TIMER)], "thresholds": {"lat": rules}})
            elif name == "subscribers":
                holders = []

                def subscribe(run_id):
                    time.sleep(12)
                    for _ in range(300):
                        silent_subscriber(base, run_id, holders)

                flood(base, server, name, {"name": "p", "steps": [step(NAMES)]}, during=subscribe)
                for s in holders:
                    s.close()
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
