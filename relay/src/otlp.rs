//! OpenTelemetry metrics intake: OTLP/HTTP (`POST /v1/metrics`, protobuf or
//! JSON, optionally gzip) and OTLP/gRPC (`MetricsService/Export`), decoded with
//! the protocol's own definitions (`opentelemetry-proto`).
//!
//! What each point becomes:
//! - a monotonic sum: counter increments; a cumulative one is turned into the
//!   increase since the stream's previous point (a lower value, or a new start
//!   time, is a restart: the whole value counts);
//! - a non-monotonic sum and a gauge: gauges (a delta non-monotonic sum adds);
//! - explicit-bucket and exponential histograms: kept as they are
//!   ([`crate::histogram`]), cumulative ones as the difference from the
//!   previous point;
//! - a summary (precomputed quantiles cannot be merged): refused, and counted.
//!
//! Resource and point attributes become the metric's tags (`name;k=v,...`, the
//! point's attribute winning), except the SDK's own `telemetry.sdk.*` and the
//! exporting process's random `service.instance.id` (the node tag already says
//! where a point came from; that id would split every metric by process), which
//! describe the exporter rather than the load. Refused points are counted as
//! malformed and told back to the sender as a partial success.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point, metric, number_data_point, AggregationTemporality, NumberDataPoint,
};
use prost::Message as _;
use tokio::net::TcpListener;

use crate::histogram::{Buckets, ExpBuckets, Exponential};
use crate::mask::Masker;
use crate::metrics::Aggregator;

/// The largest request body taken, compressed or not.
const MAX_BODY: usize = 32 << 20;
/// Cumulative streams remembered at most; past this they are forgotten (and start over).
const MAX_STREAMS: usize = 100_000;

/// The previous point of each cumulative stream, by key, with the stream's start time.
#[derive(Default)]
struct Streams {
    sums: HashMap<String, (u64, f64)>,
    buckets: HashMap<String, (u64, Buckets)>,
    exponential: HashMap<String, (u64, Exponential)>,
}

impl Streams {
    fn bound(&mut self) {
        if self.sums.len() + self.buckets.len() + self.exponential.len() > MAX_STREAMS {
            *self = Streams::default();
        }
    }
}

/// What one export did: points taken, points refused and why the first was.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Points taken.
    pub taken: u64,
    /// Points refused.
    pub refused: u64,
    /// Why the first refused point was.
    pub reason: Option<String>,
}

impl Outcome {
    fn refuse(&mut self, points: usize, reason: impl FnOnce() -> String) {
        self.refused += points as u64;
        if points > 0 && self.reason.is_none() {
            self.reason = Some(reason());
        }
    }

    fn response(&self) -> ExportMetricsServiceResponse {
        let partial_success = (self.refused > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(self.refused).unwrap_or(i64::MAX),
            error_message: self.reason.clone().unwrap_or_default(),
        });
        ExportMetricsServiceResponse { partial_success }
    }
}

/// Takes OTLP exports into a relay's aggregator.
#[derive(Clone)]
pub struct Intake {
    aggregator: Arc<Mutex<Aggregator>>,
    streams: Arc<Mutex<Streams>>,
    mask: Masker,
}

/// An attribute's value as tag text; the characters that separate tags become `_`.
fn tag_text(value: Option<&AnyValue>) -> String {
    let text = match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().map(|v| tag_text(Some(v))).collect::<Vec<_>>().join("|"),
        Some(any_value::Value::KvlistValue(kv)) => {
            kv.values.iter().map(|kv| format!("{}:{}", kv.key, tag_text(kv.value.as_ref()))).collect::<Vec<_>>().join("|")
        }
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        _ => String::new(),
    };
    text.replace([',', ';', '=', '\n'], "_")
}

/// The metric's key: its name and the tags of `resource` and `point` (the point's winning).
fn key_of(name: &str, resource: &[KeyValue], point: &[KeyValue]) -> String {
    let mut tags = BTreeMap::new();
    let describes_the_exporter = |kv: &&KeyValue| kv.key.starts_with("telemetry.sdk.") || kv.key == "service.instance.id";
    for kv in resource.iter().filter(|kv| !describes_the_exporter(kv)).chain(point) {
        tags.insert(kv.key.replace([',', ';', '=', '\n'], "_"), tag_text(kv.value.as_ref()));
    }
    let mut key = name.replace([';', '\n', '|'], "_");
    for (i, (k, v)) in tags.iter().enumerate() {
        key.push(if i == 0 { ';' } else { ',' });
        key.push_str(k);
        if !v.is_empty() {
            key.push('=');
            key.push_str(v);
        }
    }
    key
}

fn number(point: &NumberDataPoint) -> Option<f64> {
    match point.value? {
        number_data_point::Value::AsDouble(v) => Some(v).filter(|v| v.is_finite()),
        number_data_point::Value::AsInt(v) => Some(v as f64),
    }
}

fn exp_buckets(b: Option<&exponential_histogram_data_point::Buckets>) -> ExpBuckets {
    b.map_or_else(ExpBuckets::default, |b| ExpBuckets { offset: b.offset, counts: b.bucket_counts.clone() })
}

/// What a histogram point adds: itself on a delta stream; on a cumulative one, the
/// increase since the stream's previous point (all of it after a restart or a new
/// start time); `None` for an unknown temporality.
fn increase<H: Clone>(
    streams: &mut HashMap<String, (u64, H)>,
    key: &str,
    start: u64,
    temporality: i32,
    h: H,
    since: fn(&H, &H) -> Option<H>,
) -> Option<H> {
    match temporality {
        DELTA => Some(h),
        CUMULATIVE => match streams.insert(key.to_string(), (start, h.clone())) {
            Some((before_start, before)) if before_start == start => Some(since(&h, &before).unwrap_or(h)),
            _ => Some(h),
        },
        _ => None,
    }
}

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;
const DELTA: i32 = AggregationTemporality::Delta as i32;

impl Intake {
    /// An intake into `aggregator`, masking secret values in metric names and tags.
    pub fn new(aggregator: Arc<Mutex<Aggregator>>, mask: Masker) -> Self {
        Self { aggregator, streams: Arc::default(), mask }
    }

    /// Takes one export request.
    pub fn export(&self, request: &ExportMetricsServiceRequest) -> Outcome {
        let mut outcome = Outcome::default();
        // Locks poisoned by a panic elsewhere still hold sound counts: go on with them.
        let mut aggregator = self.aggregator.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        streams.bound();
        for rm in &request.resource_metrics {
            let resource = rm.resource.as_ref().map_or(&[][..], |r| r.attributes.as_slice());
            for metric in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                let key = |point: &[KeyValue]| self.mask.mask(&key_of(&metric.name, resource, point)).into_owned();
                let name = &metric.name;
                match &metric.data {
                    Some(metric::Data::Sum(sum)) => {
                        for point in &sum.data_points {
                            let Some(value) = number(point) else {
                                outcome.refuse(1, || format!("{name}: a point has no finite value"));
                                continue;
                            };
                            let key = key(&point.attributes);
                            let taken = match (sum.is_monotonic, sum.aggregation_temporality) {
                                (true, DELTA) => value >= 0.0 && aggregator.add_count(&key, value),
                                (true, CUMULATIVE) => {
                                    let previous = streams.sums.insert(key.clone(), (point.start_time_unix_nano, value));
                                    let increase = match previous {
                                        Some((start, before)) if start == point.start_time_unix_nano && value >= before => value - before,
                                        _ => value,
                                    };
                                    aggregator.add_count(&key, increase)
                                }
                                (false, DELTA) => aggregator.add_gauge(&key, value),
                                (false, CUMULATIVE) => {
                                    aggregator.set_gauge(&key, value);
                                    true
                                }
                                _ => false,
                            };
                            if taken {
                                outcome.taken += 1;
                            } else {
                                outcome.refuse(1, || format!("{name}: a point's value or temporality cannot be taken"));
                            }
                        }
                    }
                    Some(metric::Data::Gauge(gauge)) => {
                        for point in &gauge.data_points {
                            match number(point) {
                                Some(value) => {
                                    aggregator.set_gauge(&key(&point.attributes), value);
                                    outcome.taken += 1;
                                }
                                None => outcome.refuse(1, || format!("{name}: a point has no finite value")),
                            }
                        }
                    }
                    Some(metric::Data::Histogram(histogram)) => {
                        for point in &histogram.data_points {
                            let h = Buckets {
                                unit: metric.unit.clone(),
                                bounds: point.explicit_bounds.clone(),
                                counts: if point.bucket_counts.is_empty() { vec![point.count] } else { point.bucket_counts.clone() },
                                count: point.count,
                                sum: point.sum.unwrap_or(0.0),
                                min: point.min,
                                max: point.max,
                            };
                            if let Err(e) = h.check() {
                                outcome.refuse(1, || format!("{name}: {}", e.0));
                                continue;
                            }
                            let key = key(&point.attributes);
                            let (temporality, start) = (histogram.aggregation_temporality, point.start_time_unix_nano);
                            let delta = increase(&mut streams.buckets, &key, start, temporality, h, Buckets::since);
                            match delta.map(|d| aggregator.add_buckets(&key, &d)) {
                                Some(Ok(())) => outcome.taken += 1,
                                Some(Err(e)) => outcome.refuse(1, || format!("{name}: {}", e.0)),
                                None => outcome.refuse(1, || format!("{name}: unknown temporality")),
                            }
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(histogram)) => {
                        for point in &histogram.data_points {
                            let h = Exponential {
                                unit: metric.unit.clone(),
                                scale: point.scale,
                                zero_count: point.zero_count,
                                positive: exp_buckets(point.positive.as_ref()),
                                negative: exp_buckets(point.negative.as_ref()),
                                count: point.count,
                                sum: point.sum.unwrap_or(0.0),
                                min: point.min,
                                max: point.max,
                            };
                            if let Err(e) = h.check() {
                                outcome.refuse(1, || format!("{name}: {}", e.0));
                                continue;
                            }
                            let key = key(&point.attributes);
                            let (temporality, start) = (histogram.aggregation_temporality, point.start_time_unix_nano);
                            let delta = increase(&mut streams.exponential, &key, start, temporality, h, Exponential::since);
                            match delta.map(|d| aggregator.add_exponential(&key, &d)) {
                                Some(Ok(())) => outcome.taken += 1,
                                Some(Err(e)) => outcome.refuse(1, || format!("{name}: {}", e.0)),
                                None => outcome.refuse(1, || format!("{name}: unknown temporality")),
                            }
                        }
                    }
                    Some(metric::Data::Summary(summary)) => outcome.refuse(summary.data_points.len(), || {
                        format!("{name}: summaries (precomputed quantiles) cannot be merged exactly; send a histogram")
                    }),
                    None => outcome.refuse(1, || format!("{name}: a metric without data")),
                }
            }
        }
        aggregator.count(outcome.taken, outcome.refused);
        outcome
    }

    /// Answers one OTLP/HTTP request.
    async fn http(self, request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let answer = |status: StatusCode, kind: &str, body: Vec<u8>| {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            if let Ok(value) = kind.parse() {
                response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
            }
            Ok(response)
        };
        let text = |status: StatusCode, message: String| answer(status, "text/plain", message.into_bytes());
        if request.uri().path() != "/v1/metrics" {
            return text(StatusCode::NOT_FOUND, "this relay takes OTLP metrics at POST /v1/metrics\n".into());
        }
        if request.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST /v1/metrics\n".into());
        }
        let header = |name: hyper::header::HeaderName| {
            request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().trim().to_ascii_lowercase()
        };
        let json = header(hyper::header::CONTENT_TYPE).starts_with("application/json");
        let encoding = header(hyper::header::CONTENT_ENCODING);
        let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("body not read (at most {MAX_BODY} bytes): {e}\n")),
        };
        let body = match encoding.as_str() {
            "" | "identity" => body.to_vec(),
            "gzip" => {
                let mut out = Vec::new();
                match flate2::read::GzDecoder::new(&body[..]).take(MAX_BODY as u64 + 1).read_to_end(&mut out) {
                    Ok(n) if n <= MAX_BODY => out,
                    Ok(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("more than {MAX_BODY} bytes once decompressed\n")),
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("gzip body: {e}\n")),
                }
            }
            other => return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("content-encoding {other:?}: gzip or none\n")),
        };
        let decoded: Result<ExportMetricsServiceRequest, Box<dyn std::error::Error + Send + Sync>> = if json {
            serde_json::from_slice(&body).map_err(Into::into)
        } else {
            ExportMetricsServiceRequest::decode(&body[..]).map_err(Into::into)
        };
        let request = match decoded {
            Ok(r) => r,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("not an OTLP metrics export: {e}\n")),
        };
        let response = self.export(&request).response();
        if json {
            answer(StatusCode::OK, "application/json", serde_json::to_vec(&response).unwrap_or_default())
        } else {
            answer(StatusCode::OK, "application/x-protobuf", response.encode_to_vec())
        }
    }

    /// Serves OTLP/HTTP on `listener` until the task is dropped.
    pub async fn serve_http(self, listener: TcpListener) {
        while let Ok((stream, _)) = listener.accept().await {
            let intake = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| intake.clone().http(request));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    }

    /// Serves OTLP/gRPC on `listener` until the task is dropped.
    pub async fn serve_grpc(self, listener: TcpListener) {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let service =
            MetricsServiceServer::new(self).accept_compressed(tonic::codec::CompressionEncoding::Gzip).max_decoding_message_size(MAX_BODY);
        if let Err(e) = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await {
            eprintln!("OTLP/gRPC stopped: {e}");
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Intake {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(Intake::export(self, request.get_ref()).response()))
    }
}

/// Binds a TCP port for an intake; port 0 picks a free one.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_resource_and_point_tags_but_not_the_sdks_own() {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..KeyValue::default()
        };
        let resource =
            [kv("service.name", "shop"), kv("telemetry.sdk.name", "opentelemetry"), kv("zone", "a"), kv("service.instance.id", "0f6e")];
        let point = [kv("status", "2,00"), kv("zone", "b")];
        assert_eq!(key_of("http.duration", &resource, &point), "http.duration;service.name=shop,status=2_00,zone=b");
    }

    #[test]
    fn a_json_export_is_read_with_the_protocols_json_mapping() {
        let body = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"gen"}}]},
            "scopeMetrics":[{"metrics":[
              {"name":"hits","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{"startTimeUnixNano":"1","timeUnixNano":"2","asInt":"7"}]}},
              {"name":"lat","unit":"ms","histogram":{"aggregationTemporality":1,"dataPoints":[{"count":"3","sum":30.5,"bucketCounts":["1","2","0"],"explicitBounds":[5,50]}]}},
              {"name":"q","summary":{"dataPoints":[{"count":"1"}]}}
            ]}]}]}"#;
        let request: ExportMetricsServiceRequest = serde_json::from_str(body).unwrap();
        let aggregator = Arc::new(Mutex::new(Aggregator::default()));
        let intake = Intake::new(aggregator.clone(), Masker::default());
        let outcome = intake.export(&request);
        assert_eq!((outcome.taken, outcome.refused), (2, 1), "{outcome:?}");
        assert!(outcome.reason.unwrap().contains("summaries"));
        let w = aggregator.lock().unwrap().flush(1, 0, 1000);
        assert_eq!(w.counters["hits;service.name=gen"], 7.0);
        let lat = &w.buckets["lat;service.name=gen"];
        assert_eq!((lat.count, lat.unit.as_str(), lat.quantile(0.5)), (3, "ms", Some(50.0)));
        assert_eq!((w.lines, w.malformed), (2, 1));
    }

    #[test]
    fn exponential_points_that_would_exhaust_memory_or_overflow_are_refused_and_the_relay_goes_on() {
        // Two points of one metric at scale -10, offsets 0 and -2·10^9 (408 bytes once took a
        // relay to 3.7 GB), then offsets at the ends of an i32 (they once panicked the relay).
        let point = |offset: i64| {
            format!(
                r#"{{"startTimeUnixNano":"1","timeUnixNano":"2","count":"1","sum":1,"scale":-10,"zeroCount":"0",
                    "positive":{{"offset":{offset},"bucketCounts":["1"]}}}}"#
            )
        };
        let points = [0, -2_000_000_000, i64::from(i32::MIN), i64::from(i32::MAX)].map(point).join(",");
        let body = format!(
            r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[
                {{"name":"bomb","exponentialHistogram":{{"aggregationTemporality":1,"dataPoints":[{points}]}}}}]}}]}}]}}"#
        );
        let request: ExportMetricsServiceRequest = serde_json::from_str(&body).unwrap();
        let aggregator = Arc::new(Mutex::new(Aggregator::default()));
        let intake = Intake::new(aggregator.clone(), Masker::default());
        let outcome = intake.export(&request);
        assert_eq!((outcome.taken, outcome.refused), (1, 3), "{outcome:?}");
        assert!(outcome.reason.unwrap().contains("hold no finite value"));
        let w = aggregator.lock().unwrap().flush(1, 0, 1000);
        let bomb = &w.exponential["bomb"];
        assert_eq!((bomb.count, bomb.positive.counts.len()), (1, 1), "only the sound point is kept");
        assert_eq!((w.lines, w.malformed), (1, 3));
        // The aggregator is not poisoned: the next export is taken.
        assert_eq!(intake.export(&request).taken, 1);
    }
}
