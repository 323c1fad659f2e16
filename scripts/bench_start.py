#!/usr/bin/env python3
"""Start-up latency of runs with the local provider.

Starts `loads serve` on loopback with a fresh SQLite database, then for each
node count N runs a one-step plan of N tiny busybox containers and reports,
from the broker's own records:
  - POST /runs -> all step containers running (run.created_at -> last start),
  - the spread of start times across the step's nodes,
  - the engine's own time to create and start the same containers with
    `docker run -d --init` on a fresh user-defined network: N relays (the
    relay image) at once, then N step containers at once (a run starts only
    when every node's relay is up): the floor loads cannot go below.
    Overhead = the first minus this.
Usage: scripts/bench_start.py [--binary PATH] [--nodes 1 10 50] [--repeat 3]
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid


def call(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
        return json.loads(text) if text else None


def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def wait_finished(base, run_id, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        run = call(base, "GET", f"/api/v1/runs/{run_id}")
        if run["state"] in ("completed", "failed", "aborted"):
            return run
        time.sleep(0.2)
    raise SystemExit(f"run {run_id} did not finish in {limit}s")


def start_broker(binary, name, base_port):
    """`loads serve` on loopback with a fresh SQLite database; answers the process and its base URL once it answers."""
    workdir = tempfile.mkdtemp(prefix=f"loads-{name}-")
    port = base_port + os.getpid() % 1000
    env = dict(os.environ, LOADS__SERVER__PORT=str(port), LOADS__DATABASE__URL=f"sqlite://{workdir}/{name}.db",
               LOADS__BROKER__ID=f"{name}{os.getpid()}", LOADS__LOG__LEVEL="warn", LOADS__DOCKER__STOP_GRACE_SECONDS="1",
               LOADS__METRICS__INGEST_PORT="0")
    server = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            call(base, "GET", "/health")
            break
        except OSError:
            time.sleep(0.1)
    return server, base


def engine_baseline(n, network, *image_and_command):
    """Seconds for the engine to create and start n containers (docker run arguments after the name) on network, all at once."""
    names = [f"loads-bench-{uuid.uuid4().hex[:12]}" for _ in range(n)]
    t0 = time.time()
    procs = [subprocess.Popen(["docker", "run", "-d", "--init", "--network", network, "--name", name, "--label", "loads.bench=1", *image_and_command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in names]
    for p in procs:
        p.wait()
    elapsed = time.time() - t0
    subprocess.run(["docker", "rm", "-f", *names], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "loads"))
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--relay-image", default="loads/relay:0.1.0")
    args = ap.parse_args()

    server, base = start_broker(args.binary, "bench", 18000)
    try:
        project = call(base, "POST", "/api/v1/projects", {"name": "bench"})
        print(f"{'nodes':>5} {'POST->all running (s)':>22} {'start spread (s)':>17} {'engine alone (s)':>17} {'overhead (s)':>13}")
        for n in args.nodes:
            plan = call(base, "POST", f"/api/v1/projects/{project['id']}/plans", {"name": f"n{n}", "steps": [
                {"name": "tiny", "container_name": "loads/busybox:1", "instance_count": n,
                 "additional_command_args": "-c 'sleep 5'", "run_max_time": 0}]})
            totals, spreads, engine = [], [], []
            for _ in range(args.repeat):
                run = call(base, "POST", f"/api/v1/plans/{plan['id']}/runs", {})
                run = wait_finished(base, run["id"])
                if run["state"] != "completed":
                    raise SystemExit(f"run failed: {run['failure_reason']}")
                logs = call(base, "GET", f"/api/v1/runs/{run['id']}/logs")["containers"]
                starts = sorted(ts(c["created_at"]) for c in logs if c["role"] == "step")
                assert len(starts) == n, (len(starts), n)
                totals.append((starts[-1] - ts(run["created_at"])).total_seconds())
                spreads.append((starts[-1] - starts[0]).total_seconds())
                network = f"loads-bench-{uuid.uuid4().hex[:12]}"
                t0 = time.time()
                subprocess.run(["docker", "network", "create", network], check=True, stdout=subprocess.DEVNULL)
                floor = time.time() - t0
                floor += engine_baseline(n, network, "-v", "/proc:/host/proc:ro", args.relay_image)
                floor += engine_baseline(n, network, "loads/busybox:1", "sleep", "5")
                subprocess.run(["docker", "network", "rm", network], stdout=subprocess.DEVNULL)
                engine.append(floor)
            total, floor = statistics.median(totals), statistics.median(engine)
            print(f"{n:>5} {total:>22.2f} {statistics.median(spreads):>17.2f} {floor:>17.2f} {total - floor:>13.2f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
