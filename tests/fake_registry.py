#!/usr/bin/env python3
"""A registry that wants a login, for the private-registry pull test.

Usage: fake_registry.py USER PASSWORD
Listens on 127.0.0.1 (a free port, printed as `listening PORT`). Every request
without HTTP Basic credentials USER:PASSWORD gets 401 with a Basic challenge,
as a registry behind a login does; with them, /v2/ answers 200 and anything
else 404 MANIFEST_UNKNOWN (it holds no image). Each request is logged on
stdout as one JSON line {"path": ..., "authorized": true/false}.
"""
import base64
import http.server
import json
import sys


def main():
    expected = "Basic " + base64.b64encode(f"{sys.argv[1]}:{sys.argv[2]}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def answer(self, status, body, extra=()):
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def do_GET(self):
            authorized = self.headers.get("Authorization") == expected
            print(json.dumps({"path": self.path, "authorized": authorized}), flush=True)
            if not authorized:
                challenge = ("WWW-Authenticate", 'Basic realm="loads-test"')
                self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, [challenge])
            elif self.path.rstrip("/") == "/v2":
                self.answer(200, {})
            else:
                self.answer(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})

        do_HEAD = do_GET

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
