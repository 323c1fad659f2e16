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
#[cfg(feature = "server")]
pub mod host;
pub mod mask;
pub mod metrics;
#[cfg(feature = "server")]
pub mod otlp;
#[cfg(feature = "server")]
pub mod run;
#[cfg(feature = "server")]
pub mod udp;

#[cfg(feature = "server")]
mod deliver;

/// What the relay prints for each OTLP port it opened: `<this><protocol> <port>`.
pub const OTLP_LISTENING: &str = "relay listening for OTLP on tcp port ";

/// What the relay prints once its statsd port is open, followed by the port.
pub const LISTENING: &str = "relay listening for statsd on udp and tcp port ";
