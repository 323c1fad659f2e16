#!/usr/bin/env python3
"""Sends OpenTelemetry metrics with the official Python SDK and exporters, as a
load generator would, then prints what it sent as JSON.

The exporter is configured by the standard environment
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: `http/protobuf` or
`grpc`, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE), exactly as a
container of a run gets it. Instruments, recorded over `--rounds` exports:
  orders         counter, attribute status=ok (1 each) and status=error (2 each)
  inflight       up-down counter (+5, -2 each round)
  queue.depth    observable gauge, 7
  http.duration  histogram, unit ms, the SDK's default explicit buckets
  rpc.duration   histogram, unit ms, exponential buckets (at most 160)
Usage: otlp_sender.py --service NAME [--rounds 2] [--per-round 1000]
"""
import argparse
import json
import os

from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource


def exporter():
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        return OTLPMetricExporter(insecure=True)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return OTLPMetricExporter()


def duration(i):
    """A spread of durations in ms, from under a millisecond to several seconds."""
    return ((i * 7919) % 10000) / 10.0 + (i % 7) * 0.013 + (3000.0 if i % 97 == 0 else 0.0) + 0.05


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--service", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-round", type=int, default=1000)
    args = ap.parse_args()

    # One export per round, when the test says (force_flush), never on a timer of its own.
    reader = PeriodicExportingMetricReader(exporter(), export_interval_millis=3_600_000)
    views = [View(instrument_name="rpc.duration", aggregation=ExponentialBucketHistogramAggregation(max_size=160))]
    provider = MeterProvider(resource=Resource.create({"service.name": args.service}), metric_readers=[reader], views=views)
    meter = provider.get_meter("loads-test")
    orders = meter.create_counter("orders")
    inflight = meter.create_up_down_counter("inflight")
    meter.create_observable_gauge("queue.depth", callbacks=[lambda options: [Observation(7)]])
    http = meter.create_histogram("http.duration", unit="ms")
    rpc = meter.create_histogram("rpc.duration", unit="ms")

    sent = {"orders_ok": 0, "orders_error": 0, "inflight": 0, "durations": []}
    i = 0
    for _ in range(args.rounds):
        for _ in range(args.per_round):
            v = duration(i)
            http.record(v)
            rpc.record(v)
            sent["durations"].append(v)
            if i % 10 == 0:
                orders.add(2, {"status": "error"})
                sent["orders_error"] += 2
            else:
                orders.add(1, {"status": "ok"})
                sent["orders_ok"] += 1
            i += 1
        inflight.add(5)
        inflight.add(-2)
        sent["inflight"] += 3
        if not provider.force_flush(timeout_millis=30_000):
            raise SystemExit("the export did not complete")
    provider.shutdown()
    print(json.dumps(sent))


if __name__ == "__main__":
    main()
