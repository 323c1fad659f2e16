#!/usr/bin/env python3
"""A fault-injecting proxy in front of the moto server, for the EC2 fault tests.

Every request is passed to the upstream EC2 endpoint unchanged, except
RunInstances calls chosen by the rules below, which get an EC2 error instead.
Each RunInstances is logged on stdout as one JSON line ({"min": MinCount,
"max": MaxCount, "public_ip": whether a public address was asked for,
"market": "spot" or "on_demand", "answer": CODE or "passed"}), so a test can read what the broker asked for and
what it was told.

  --fail CODE:N      the first N RunInstances get CODE (RequestLimitExceeded,
                     InsufficientInstanceCapacity, VcpuLimitExceeded, ...)
  --capacity MAX     RunInstances whose MinCount is above MAX get
                     InsufficientInstanceCapacity (capacity for MAX only)
  --delay N:SECONDS  the first N RunInstances get no answer for SECONDS (then
                     none at all: the connection is closed), like a hung API
  --spot-short CODE  every spot RunInstances (InstanceMarketOptions.MarketType
                     spot) gets CODE (InsufficientInstanceCapacity,
                     SpotMaxPriceTooLow): no spot capacity at all
  --log-actions A,B  also log each request of these actions as {"action": A}
                     (Service Quotas requests by their target, e.g. GetServiceQuota)
  --quota CODE=N     Service Quotas' GetServiceQuota for service ec2 and quota
                     CODE (L-1216C47A: on-demand standard vCPUs, L-34B43A08:
                     standard spot vCPUs) answers N, as Service Quotas would;
                     moto answers only VPC quotas
  --not-found N      the first N DescribeInstances naming instance ids get
                     InvalidInstanceID.NotFound, as EC2 answers for a while
                     after a launch (eventual consistency); each is logged as
                     {"describe": CODE or "passed"}

Listens on 127.0.0.1 only; prints "listening PORT" when ready.
"""
import argparse
import http.server
import json
import sys
import threading
import time
import urllib.parse
import urllib.request

STATUS = {"RequestLimitExceeded": 503, "InsufficientInstanceCapacity": 500}
MESSAGES = {
    "RequestLimitExceeded": "Request limit exceeded.",
    "InsufficientInstanceCapacity": "We currently do not have sufficient capacity in the Availability Zone you requested.",
    "VcpuLimitExceeded": "You have requested more vCPU capacity than your current vCPU limit of 32 allows.",
    "SpotMaxPriceTooLow": "Your Spot request price is lower than the minimum required Spot request fulfillment price.",
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--fail", default="")
    parser.add_argument("--capacity", type=int, default=None)
    parser.add_argument("--delay", default="")
    parser.add_argument("--not-found", type=int, default=0)
    parser.add_argument("--spot-short", default="")
    parser.add_argument("--log-actions", default="")
    parser.add_argument("--quota", action="append", default=[])
    args = parser.parse_args()
    fail_code, fail_left = (args.fail.split(":")[0], int(args.fail.split(":")[1])) if args.fail else ("", 0)
    lock = threading.Lock()
    delay_left, delay_for = (int(args.delay.split(":")[0]), float(args.delay.split(":")[1])) if args.delay else (0, 0.0)
    state = {"fail_left": fail_left, "delay_left": delay_left, "not_found_left": args.not_found}
    quotas = {code: float(value) for code, value in (q.split("=") for q in args.quota)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def error(self, code, message, status):
            xml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                   f'<Message>{message}</Message></Error></Errors>'
                   f'<RequestID>fault-proxy</RequestID></Response>').encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            self.wfile.write(xml)

        def quota(self, body):
            asked = json.loads(body or b"{}")
            value = quotas.get(asked.get("QuotaCode", "")) if asked.get("ServiceCode") == "ec2" else None
            if value is None:
                answer, status = {"__type": "NoSuchResourceException", "message": "no such quota"}, 400
            else:
                answer, status = {"Quota": {"ServiceCode": "ec2", "QuotaCode": asked["QuotaCode"], "Value": value,
                                            "Unit": "None", "Adjustable": True, "GlobalQuota": False}}, 200
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            target = self.headers.get("X-Amz-Target", "")
            if target.startswith("ServiceQuotasV20190624."):
                action = target.split(".", 1)[1]
                if action in args.log_actions.split(","):
                    print(json.dumps({"action": action}), flush=True)
                if action == "GetServiceQuota":
                    self.quota(body)
                    return
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            action = form.get("Action", [""])[0]
            if action and action in args.log_actions.split(","):
                print(json.dumps({"action": action}), flush=True)
            if form.get("Action") == ["DescribeInstances"] and "InstanceId.1" in form:
                with lock:
                    missing = state["not_found_left"] > 0
                    if missing:
                        state["not_found_left"] -= 1
                if args.not_found:
                    print(json.dumps({"describe": "InvalidInstanceID.NotFound" if missing else "passed"}), flush=True)
                if missing:
                    ids = ", ".join(v[0] for k, v in sorted(form.items()) if k.startswith("InstanceId."))
                    self.error("InvalidInstanceID.NotFound", f"The instance IDs '{ids}' do not exist", 400)
                    return
            if form.get("Action") == ["RunInstances"]:
                low, high = int(form.get("MinCount", ["1"])[0]), int(form.get("MaxCount", ["1"])[0])
                code = None
                with lock:
                    hang = state["delay_left"] > 0
                    if hang:
                        state["delay_left"] -= 1
                if hang:
                    print(json.dumps({"min": low, "max": high, "answer": "hung"}), flush=True)
                    time.sleep(delay_for)
                    self.close_connection = True
                    return
                market = form.get("InstanceMarketOptions.MarketType", ["on_demand"])[0]
                with lock:
                    if market == "spot" and args.spot_short:
                        code = args.spot_short
                    elif state["fail_left"] > 0:
                        state["fail_left"] -= 1
                        code = fail_code
                    elif args.capacity is not None and low > args.capacity:
                        code = "InsufficientInstanceCapacity"
                public = form.get("NetworkInterface.1.AssociatePublicIpAddress", [""])[0] == "true"
                print(json.dumps({"min": low, "max": high, "public_ip": public, "market": market, "answer": code or "passed"}),
                      flush=True)
                if code:
                    self.error(code, MESSAGES.get(code, code), STATUS.get(code, 400))
                    return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            request = urllib.request.Request(args.upstream + self.path, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, payload, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "text/xml")
            except urllib.error.HTTPError as e:
                status, payload, kind = e.code, e.read(), e.headers.get("Content-Type", "text/xml")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
