#!/usr/bin/env python3
"""A broker that is slow to answer, for the exactly-once tests.

Usage: slow_ingest.py TARGET_PORT HOST SLOW_ANSWERS DELAY_SECONDS
Listens on HOST (a test's own Docker network's gateway, for relays to reach) on
a free port, printed as `listening PORT` on stdout. Each POST is forwarded to
127.0.0.1:TARGET_PORT at once, as it came; the first SLOW_ANSWERS answers are
then held DELAY_SECONDS before they are sent back, so a relay that waits less
gives up on a delivery the broker has taken and delivers it again. Prints
`forwarded N` on stderr after each. Runs until it is killed.
"""
import http.client
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TARGET, HOST, SLOW, DELAY = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
LOCK = threading.Lock()
SEEN = [0]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        upstream = http.client.HTTPConnection("127.0.0.1", TARGET, timeout=30)
        upstream.request("POST", self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        payload = answer.read()
        upstream.close()
        with LOCK:
            SEEN[0] += 1
            n = SEEN[0]
        print(f"forwarded {n}", file=sys.stderr, flush=True)
        if n <= SLOW:
            time.sleep(DELAY)
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the relay gave up waiting

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer((HOST, 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
