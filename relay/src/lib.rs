//! The per-node metrics relay of loads (the "heka" role), a crate of its own so
//! that the relay image always holds a small optimized build of just this.
//!
//! - [`metrics`]: statsd parsing, a node's windows and their exact merge.
//! - [`histogram`]: OpenTelemetry's explicit and exponential histograms.
//! - [`otlp`]: OTLP/HTTP and OTLP/gRPC metrics intake.
//! - [`udp`]: the statsd datagram receiver and its kernel drop counter.
//! - [`run`]: the relay itself: intakes, flush windows, delivery to the broker.

pub mod cardinality;
pub mod histogram;
pub mod host;
pub mod mask;
pub mod metrics;
pub mod otlp;
pub mod run;
pub mod udp;

mod deliver;

/// What the relay prints once its statsd port is open, followed by the port.
pub const LISTENING: &str = "relay listening for statsd on udp and tcp port ";
