#!/usr/bin/env python3
"""The broker's memory with many live runs for a long time.

Starts `loads serve` on loopback with a fresh SQLite database and starts
`--runs` runs of a plan whose one step sends statsd (two counters and a timer,
20 lines a second) to its node's relay for `--seconds`. Samples the broker's
RSS (VmRSS of the process) every `--every` seconds and prints each sample, then
the first, lowest, highest and last figures and the growth from the first
minute to the end. Every run's feed gets a metrics event a second the whole
time, so a feed that kept every event would show here as steady growth.
Usage: scripts/bench_memory.py [--binary PATH] [--runs 10] [--seconds 600] [--every 10]
"""
import argparse
import os
import time

from bench_start import call, start_broker, wait_finished

SENDER = ("i=0; while [ $i -lt {count} ]; do "
          "printf \"requests:1|c\\nbytes:512|c\\nlatency:$((i % 50 + 1))|ms\\n\" | nc $STATSD_HOST $STATSD_PORT; "
          "i=$((i+1)); usleep 150000; done")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "loads"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--every", type=int, default=10)
    args = ap.parse_args()

    server, base = start_broker(args.binary, "memory", 19000)
    try:
        project = call(base, "POST", "/api/v1/projects", {"name": "memory"})
        # usleep 150000 between sends of 3 lines: about 20 lines a second per run.
        count = int(args.seconds / 0.15)
        script = SENDER.format(count=count).replace("$", "$$")
        plan = call(base, "POST", f"/api/v1/projects/{project['id']}/plans", {"name": "steady", "steps": [
            {"name": "sender", "container_name": "loads/busybox:1", "run_max_time": args.seconds + 60,
             "additional_command_args": f"-c '{script}'"}]})
        runs = [call(base, "POST", f"/api/v1/plans/{plan['id']}/runs", {})["id"] for _ in range(args.runs)]
        started = time.time()
        samples = []
        print(f"{'t (s)':>6} {'RSS (MiB)':>10} {'live runs':>10}")
        while time.time() - started < args.seconds:
            live = sum(1 for r in runs if call(base, "GET", f"/api/v1/runs/{r}")["state"] in ("pending", "initializing", "running"))
            mib = rss_kib(server.pid) / 1024
            samples.append((time.time() - started, mib))
            print(f"{samples[-1][0]:6.0f} {mib:10.1f} {live:10d}", flush=True)
            time.sleep(args.every)
        requests = 0
        for r in runs:
            run = wait_finished(base, r, limit=180)
            if run["state"] != "completed":
                raise SystemExit(f"run {r} ended {run['state']}: {run['failure_reason']}")
            metrics = call(base, "GET", f"/api/v1/runs/{r}/metrics")["metrics"]
            requests += sum(m["count"] for m in metrics if m["metric"] == "requests")
        print(f"requests counted over all runs: {requests:.0f}")
        after_minute = [m for t, m in samples if t >= 60] or [samples[-1][1]]
        values = [m for _, m in samples]
        print(f"runs={args.runs} seconds={args.seconds} first={values[0]:.1f} MiB min={min(values):.1f} "
              f"max={max(values):.1f} last={values[-1]:.1f} growth_after_first_minute={after_minute[-1] - after_minute[0]:+.1f} MiB "
              f"after_finish={rss_kib(server.pid) / 1024:.1f} MiB")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
