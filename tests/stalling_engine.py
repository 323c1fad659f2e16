#!/usr/bin/env python3
"""A Docker engine stand-in whose image export stops moving, for the copy-stall test.

Usage: stalling_engine.py
Listens on 127.0.0.1 (a free port, printed as `listening PORT`). Answers
GET /version (and /_ping) as an engine does, and GET .../images/NAME/get with
the first 64 KiB of a tar stream, then nothing more while the connection
lasts, as an engine behind a link that died would.
"""
import http.server
import json
import sys
import time


def main():
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            if path.endswith("/version") or path.endswith("/_ping"):
                body = json.dumps({"Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if "/images/" in path and path.endswith("/get"):
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\0" * 65536
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                # Bounded: the test gives up long before.
                time.sleep(300)
                return
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
