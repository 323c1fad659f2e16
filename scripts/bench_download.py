#!/usr/bin/env python3
"""The broker's memory while a step's nodes load a large `container_url` tarball.

Builds an image of busybox plus a `--mib` MiB file of random bytes, saves it
as a tarball, serves it over HTTP on loopback (Python's http.server), removes
the image from the engine, then starts `loads serve` with a fresh SQLite
database and runs a `--nodes`-node step whose image comes from that URL.
Samples the broker's RSS every 0.2 s throughout and prints its baseline, its
peak and how many times the server was asked for the tarball.
Usage: scripts/bench_download.py [--binary PATH] [--mib 1024] [--nodes 3]
"""
import argparse
import functools
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time

from bench_start import call, start_broker, wait_finished

TAG = "loads/bench-big:1"


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def do_GET(self):
        CountingHandler.requests += 1
        super().do_GET()

    def log_message(self, *args):
        pass


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "loads"))
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="loads-bench-download-")
    try:
        context = os.path.join(work, "context")
        os.makedirs(context)
        subprocess.run(["head", "-c", f"{args.mib}M", "/dev/urandom"], stdout=open(os.path.join(context, "big.bin"), "wb"), check=True)
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write("FROM loads/busybox:1\nCOPY big.bin /big.bin\n")
        subprocess.run(["docker", "build", "-q", "-t", TAG, context], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        served = os.path.join(work, "served")
        os.makedirs(served)
        tarball = os.path.join(served, "image.tar")
        subprocess.run(["docker", "save", "-o", tarball, TAG], check=True)
        size_mib = os.path.getsize(tarball) / 1048576
        subprocess.run(["docker", "rmi", "-f", TAG], check=True, stdout=subprocess.DEVNULL)

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=served))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/image.tar"

        os.environ["LOADS__DOCKER__ALLOW_LOOPBACK_IMAGE_URLS"] = "true"
        os.environ["LOADS__DOCKER__DOWNLOAD_DIR"] = os.path.join(work, "downloads")
        os.environ["LOADS__DOCKER__PREPARE_TIMEOUT_SECONDS"] = "1800"
        server, base = start_broker(args.binary, "download", 20000)
        try:
            baseline = rss_kib(server.pid)
            project = call(base, "POST", "/api/v1/projects", {"name": "download"})
            plan = call(base, "POST", f"/api/v1/projects/{project['id']}/plans", {"name": "big", "steps": [
                {"name": "big", "container_name": TAG, "container_url": url, "instance_count": args.nodes,
                 "additional_command_args": "-c 'ls -l /big.bin'"}]})
            started = time.time()
            run = call(base, "POST", f"/api/v1/plans/{plan['id']}/runs", {})
            peak = baseline
            while call(base, "GET", f"/api/v1/runs/{run['id']}")["state"] not in ("completed", "failed", "aborted"):
                peak = max(peak, rss_kib(server.pid))
                time.sleep(0.2)
            run = wait_finished(base, run["id"])
            print(f"tarball={size_mib:.0f} MiB nodes={args.nodes} state={run['state']} seconds={time.time() - started:.1f} "
                  f"downloads={CountingHandler.requests} rss_baseline={baseline / 1024:.1f} MiB rss_peak={peak / 1024:.1f} MiB "
                  f"growth={(peak - baseline) / 1024:+.1f} MiB")
        finally:
            server.terminate()
            server.wait(timeout=60)
            httpd.shutdown()
    finally:
        subprocess.run(["docker", "rmi", "-f", TAG], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
