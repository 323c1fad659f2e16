#!/usr/bin/env python3
"""How fast a breached `abort_on_fail` threshold stops a run.

Starts `loads serve` on loopback with a fresh SQLite database and runs, `--repeat`
times, a plan with a service step and a generator step on `--nodes` nodes. Each
generator sends a fast timing ten times a second, then, after `--after` seconds,
a slow one, which breaches the plan's threshold `lat: max<500` (abort_on_fail).
For each run it reads the breach time (the end of the window that breached it,
as the run's threshold records it) and every step container's exit time (as the
engine recorded it, from the run's logs) and prints how long after the breach
the last generator and the last container (the service, stopped last) exited,
and when the run ended. The generators exit on SIGTERM (a shell trap, checked
every 100 ms); `docker.stop_grace_seconds` is 1.
Usage: scripts/bench_breach.py [--binary PATH] [--nodes 10] [--repeat 3] [--after 3]
"""
import argparse
import os
import statistics

from bench_start import call, start_broker, ts, wait_finished

GENERATOR = ("trap \"exit 0\" TERM; i=0; while [ $i -lt 600 ]; do v=10; [ $i -ge {fast} ] && v=900; "
             "printf \"lat:$v|ms\\n\" | nc $STATSD_HOST $STATSD_PORT; usleep 100000; i=$((i+1)); done")
SERVICE = "trap \"exit 0\" TERM; while :; do usleep 100000; done"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "loads"))
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--after", type=int, default=3)
    args = ap.parse_args()

    server, base = start_broker(args.binary, "breach", 20000)
    try:
        project = call(base, "POST", "/api/v1/projects", {"name": "breach"})
        generator = GENERATOR.format(fast=args.after * 10).replace("$", "$$")
        plan = call(base, "POST", f"/api/v1/projects/{project['id']}/plans", {
            "name": "breach",
            "thresholds": {"lat": [{"threshold": "max<500", "abort_on_fail": True}]},
            "steps": [
                {"name": "svc", "container_name": "loads/busybox:1", "service": True, "run_max_time": 0,
                 "additional_command_args": f"-c '{SERVICE}'"},
                {"name": "gen", "container_name": "loads/busybox:1", "instance_count": args.nodes, "run_delay": 1,
                 "run_max_time": 120, "additional_command_args": f"-c '{generator}'"},
            ]})
        print(f"{'run':>4} {'last generator (ms)':>20} {'last container (ms)':>20} {'run ended (ms)':>15}")
        generators, lasts = [], []
        for i in range(args.repeat):
            run_id = call(base, "POST", f"/api/v1/plans/{plan['id']}/runs", {})["id"]
            run = wait_finished(base, run_id, limit=300)
            if run["state"] != "failed" or not run["failure_reason"].startswith("threshold lat max<500"):
                raise SystemExit(f"run {run_id} ended {run['state']}: {run['failure_reason']}")
            breach = ts(run["thresholds"][0]["first_breach_at"])
            containers = call(base, "GET", f"/api/v1/runs/{run_id}/logs")["containers"]
            exits = {c["step_name"]: [] for c in containers}
            for c in containers:
                if c["role"] == "step":
                    exits[c["step_name"]].append(ts(c["exited_at"]))
            if len(exits["gen"]) != args.nodes:
                raise SystemExit(f"run {run_id}: {len(exits['gen'])} generator containers, not {args.nodes}")
            gen_ms = (max(exits["gen"]) - breach).total_seconds() * 1000
            last_ms = (max(exits["gen"] + exits["svc"]) - breach).total_seconds() * 1000
            ended_ms = (ts(run["completed_at"]) - breach).total_seconds() * 1000
            generators.append(gen_ms)
            lasts.append(last_ms)
            print(f"{i + 1:4d} {gen_ms:20.0f} {last_ms:20.0f} {ended_ms:15.0f}", flush=True)
        print(f"nodes={args.nodes} repeat={args.repeat} median last generator {statistics.median(generators):.0f} ms, "
              f"last container {statistics.median(lasts):.0f} ms after the breaching window's end")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
