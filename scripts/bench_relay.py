#!/usr/bin/env python3
"""The relay's statsd intake beside collectd's statsd plugin, on the same traffic.

Both receivers take the same stream of statsd datagrams on loopback, 20 lines a
datagram (half counters, half timers), one receiver at a time:
  - at full speed for `--seconds`: the lines each took per second of its own
    CPU (user + system of the whole process, from /proc),
  - at each of `--rates` (lines per second) for `--seconds`: the share lost.
A line is lost when its datagram never reached the receiver: the kernel's
count of datagrams it dropped on the receiver's socket (/proc/net/udp), which
is the same measure for both. For the relay its own count of lines is checked
against what was sent (its `--json` totals at exit).

collectd is Debian's `collectd-core` (statsd plugin, csv writer, interval 1 s,
default socket settings); the relay is the optimized `loads-relay` the relay
image holds (`cargo build --profile relay -p loads-relay`).
Usage: scripts/bench_relay.py [--relay PATH] [--collectd PATH] [--seconds 10] [--names 4 100]
                              [--rates 100000 300000 500000 1000000 2000000]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

LINES = 20


def datagrams(names, n=256):
    """`n` distinct datagrams of LINES lines each: counters and timers of `names` names each."""
    out = []
    for i in range(n):
        lines = []
        for j in range(LINES // 2):
            k = (i * LINES + j) % names
            lines.append(f"bench.endpoint{k}.requests:1|c")
            lines.append(f"bench.endpoint{k}.latency:{(i * 37 + j * 11) % 900 + 1}|ms")
        out.append("\n".join(lines).encode())
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_drops(port):
    """Datagrams the kernel dropped on the UDP socket bound to `port` on 127.0.0.1."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want:
                return int(fields[-1])
    raise SystemExit(f"no UDP socket on port {port}")


def send(port, rate, seconds, packets):
    """Sends for `seconds` at `rate` lines per second (0: as fast as possible); answers datagrams sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", port)
    sent, n = 0, len(packets)
    start = time.perf_counter()
    end = start + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = int((now - start) * rate / LINES) if rate else sent + 1000
        while sent < due:
            try:
                sock.sendto(packets[sent % n], target)
            except BlockingIOError:
                pass
            sent += 1
        if rate:
            time.sleep(0.001)
    return sent


def wait_port(port, limit=10):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            udp_drops(port)
            return
        except SystemExit:
            time.sleep(0.05)
    raise SystemExit(f"nothing listened on UDP port {port}")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collectd:
    name = "collectd statsd"

    def __init__(self, binary):
        self.binary = binary

    def start(self, port):
        self.dir = tempfile.mkdtemp(prefix="bench-collectd-")
        conf = os.path.join(self.dir, "collectd.conf")
        with open(conf, "w") as f:
            f.write(f"""Hostname "bench"
FQDNLookup false
Interval 1
BaseDir "{self.dir}"
PIDFile "{self.dir}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin statsd
LoadPlugin csv
<Plugin statsd>
  Host "127.0.0.1"
  Port "{port}"
  TimerCount true
</Plugin>
<Plugin csv>
  DataDir "{self.dir}/csv"
  StoreRates false
</Plugin>
""")
        self.proc = subprocess.Popen([self.binary, "-f", "-C", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return None


class Relay:
    name = "loads-relay"

    def __init__(self, binary):
        self.binary = binary

    def start(self, port):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOADS_")}
        self.proc = subprocess.Popen(
            [self.binary, "--statsd-port", str(port), "--otlp-http-port", "0", "--otlp-grpc-port", "0", "--bind", "127.0.0.1", "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wait_port(port)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        totals = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(totals[-1])["lines"] if totals else None


def measure(receiver, rate, seconds, packets):
    port = free_port()
    receiver.start(port)
    pid = receiver.proc.pid
    cpu0, drops0 = cpu_seconds(pid), udp_drops(port)
    sent = send(port, rate, seconds, packets)
    # What is queued is still taken: wait until the receiver's CPU stops moving.
    last = cpu_seconds(pid)
    for _ in range(50):
        time.sleep(0.2)
        now = cpu_seconds(pid)
        if now == last:
            break
        last = now
    drops = udp_drops(port) - drops0
    cpu = cpu_seconds(pid) - cpu0
    counted = receiver.stop()
    taken = (sent - drops) * LINES
    return {"sent": sent * LINES, "taken": taken, "lost": drops * LINES, "cpu": cpu, "counted": counted}


def main():
    ap = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--relay", default=os.path.join(target, "relay-build", "relay", "loads-relay"))
    ap.add_argument("--collectd", default="/usr/sbin/collectd")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--names", type=int, nargs="*", default=[4, 100], help="distinct counter (and timer) names, one run each")
    ap.add_argument("--rates", type=int, nargs="*", default=[100_000, 300_000, 500_000, 1_000_000, 2_000_000])
    args = ap.parse_args()
    version = subprocess.run([args.relay, "--version"], capture_output=True, text=True).stdout.strip()
    if "(optimized)" not in version:
        sys.exit(f"{args.relay}: not an optimized loads-relay ({version!r}); cargo build --profile relay -p loads-relay")
    receivers = [Collectd(args.collectd), Relay(args.relay)]
    print(f"{version}; {LINES} lines a datagram; {args.seconds:g} s each")
    for names in args.names:
        packets = datagrams(names)
        print(f"\n{names} counter and {names} timer names")
        print(f"{'receiver':<16} {'rate (lines/s)':>14} {'sent':>11} {'lost':>10} {'lost %':>7} {'CPU s':>6} {'lines/CPU-s':>12}  counted")
        for receiver in receivers:
            for rate in [0] + args.rates:
                m = measure(receiver, rate, args.seconds, packets)
                per_cpu = m["taken"] / m["cpu"] if m["cpu"] else float("inf")
                label = "full speed" if rate == 0 else f"{rate:,}"
                lost = 100.0 * m["lost"] / m["sent"] if m["sent"] else 0.0
                counted = "" if m["counted"] is None else f"{m['counted']:,}" + (" (= taken)" if m["counted"] == m["taken"] else " (!= taken)")
                print(f"{receiver.name:<16} {label:>14} {m['sent']:>11,} {m['lost']:>10,} {lost:>7.3f} {m['cpu']:>6.2f} {per_cpu / 1e6:>10.2f} M  {counted}",
                      flush=True)


if __name__ == "__main__":
    main()
