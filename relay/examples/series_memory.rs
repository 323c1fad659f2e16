//! What one timer series costs in memory, before and after histograms that grow
//! with their values: `cargo run --release -p loads-relay --example series_memory`.
//! An HDR histogram's counts are one `u64` per value it can tell apart.

use hdrhistogram::Histogram;
use loads_relay::metrics::{decode_histogram, new_histogram, Aggregator};

fn kib(h: &Histogram<u64>) -> f64 {
    (h.distinct_values() * 8) as f64 / 1024.0
}

fn main() {
    let full = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    println!("a histogram for 1 µs .. 1 h, 3 digits, as every timer had one: {:.0} KiB", kib(&full));
    for (label, micros) in [("1 ms", 1_000), ("12 ms", 12_000), ("250 ms", 250_000), ("1 s", 1_000_000), ("1 h", 3_600_000_000)] {
        let mut h = new_histogram();
        h.record(micros).unwrap();
        println!("a histogram grown to {label}: {:.0} KiB", kib(&h));
    }
    // On the relay, a series seen a few times in a window keeps its samples, not a histogram.
    let mut a = Aggregator::default();
    a.take("req.1.lat:12|ms");
    let w = a.flush(1, 0, 1000);
    let sent = decode_histogram(&w.timers["req.1.lat"]).unwrap();
    println!(
        "one sample on the relay: 8 bytes while the window lasts; {} bytes in the window as sent; {:.0} KiB once decoded at the broker",
        w.timers["req.1.lat"].len(),
        kib(&sent)
    );
}
