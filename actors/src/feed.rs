//! The live feed of a run: every state change of the run, its steps, nodes
//! and containers, numbered in order.
//!
//! The feed keeps the run's state changes (its last `FEED_EVENTS` events at
//! most) and only its last `METRIC_EVENTS_KEPT` metrics events: a metrics
//! event per step per second would grow without end otherwise, and older
//! windows live on in the summaries and InfluxDB. A subscriber that joins late
//! or reconnects with `since` gets what is kept after it (numbers of metrics
//! events let go are skipped), is told where the kept history starts, and gets
//! the run's current state with every subscription.
//!
//! An event is written as JSON once and shared by every subscriber, however
//! many there are. Each subscriber's queue is bounded in bytes: one that falls
//! behind is dropped (it reconnects with `since`) rather than holding the run,
//! or the broker's memory, back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::domain::views::{RunState, StepState, ThresholdView, Verdict};

/// One region's part of a merged window: its nodes' counters, timers and histograms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct RegionWindow {
    /// How many of the region's nodes it merges.
    pub nodes: usize,
    /// Counter sums.
    #[schema(value_type = Object)]
    pub counters: std::collections::BTreeMap<String, f64>,
    /// Timer statistics (milliseconds) over the region's samples.
    #[schema(value_type = Object)]
    pub timers: std::collections::BTreeMap<String, crate::domain::metrics::TimerStats>,
    /// OpenTelemetry histograms over the region's points.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub histograms: std::collections::BTreeMap<String, loads_relay::histogram::HistogramStats>,
}

/// How many bytes of events a subscriber may have unread before it is dropped.
pub const SUBSCRIBER_BYTES: usize = 4 << 20;

/// How many of a run's events its feed keeps; older ones are let go, oldest first.
pub const FEED_EVENTS: usize = 2000;

/// How many metrics events a feed keeps (two minutes of one step's windows); older ones are let go.
pub const METRIC_EVENTS_KEPT: usize = 120;

/// One numbered event.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct RunEvent {
    /// Position in the run's feed, from 1.
    pub seq: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The run changed state.
    Run {
        /// The new state.
        state: RunState,
        /// Why, for failures.
        reason: Option<String>,
    },
    /// A step changed state.
    Step {
        /// The step's name.
        step: String,
        /// The new state.
        state: StepState,
        /// Why, for failures.
        reason: Option<String>,
    },
    /// A node changed state: `acquired`, `ready`, `released`.
    Node {
        /// The step's name.
        step: String,
        /// The node.
        node: String,
        /// The new state.
        state: String,
    },
    /// One flush window of a step's metrics, merged over its nodes.
    Metrics {
        /// The step's name.
        step: String,
        /// Start of the window, Unix milliseconds.
        start_ms: i64,
        /// How many nodes it merges.
        nodes: usize,
        /// Counter sums.
        #[schema(value_type = Object)]
        counters: std::collections::BTreeMap<String, f64>,
        /// Timer statistics (milliseconds) over every node's samples.
        #[schema(value_type = Object)]
        timers: std::collections::BTreeMap<String, crate::domain::metrics::TimerStats>,
        /// OpenTelemetry histograms over every node's points, in their own unit, with how
        /// exact their percentiles are (`kind`, `relative_error`).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        #[schema(value_type = Object)]
        histograms: std::collections::BTreeMap<String, loads_relay::histogram::HistogramStats>,
        /// Each node's CPU use in the window, percent (nodes that sent host samples).
        #[schema(value_type = Object)]
        cpu: std::collections::BTreeMap<String, f64>,
        /// A step spread over several regions: the window of each region's nodes.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        #[schema(value_type = Object)]
        regions: std::collections::BTreeMap<String, RegionWindow>,
        /// Values of the step not kept so far because their series came past a cap
        /// (`metrics.max_series_per_window`, `metrics.max_series_per_step`): the summary's
        /// `series.overflow` rows say which patterns.
        #[serde(default, skip_serializing_if = "is_zero")]
        overflow: u64,
    },
    /// A step's image tarball is being downloaded (`container_url`, shown without its query string).
    Download {
        /// The step's name.
        step: String,
        /// Where from.
        url: String,
        /// Bytes so far.
        bytes: u64,
        /// The size, when the server said.
        total: Option<u64>,
    },
    /// The run's Grafana dashboard was published (when the run starts; it is updated at the end).
    Dashboard {
        /// Where it is.
        url: String,
    },
    /// A threshold's state changed: `pending`, `ok`, `failing` while the run is live; `passed` or `failed` once judged.
    Threshold {
        /// The threshold as it stands.
        threshold: ThresholdView,
    },
    /// What the run's EC2 instances have cost so far, after each metering (`budget.check_seconds`)
    /// and once complete when the run closes.
    Cost {
        /// The cost as recorded.
        cost: crate::domain::usage::RunCost,
    },
    /// The run's verdict, published once stored, just before the run's final state.
    Verdict {
        /// The verdict.
        verdict: Verdict,
        /// Why, for a human.
        reason: String,
    },
    /// A container changed state: `started`, `exited`, `removed`.
    Container {
        /// The step's name.
        step: String,
        /// The node.
        node: String,
        /// The engine's container id.
        container: String,
        /// The new state.
        state: String,
        /// The exit code, once it exited.
        exit_code: Option<i64>,
    },
}

/// An event as subscribers get it: shared, its JSON written once.
#[derive(Debug)]
pub struct Shared {
    /// The event.
    pub event: RunEvent,
    /// The event as JSON, as the websocket sends it.
    pub json: String,
}

impl Shared {
    fn new(event: RunEvent) -> Arc<Self> {
        let json = serde_json::to_string(&event).unwrap_or_default();
        Arc::new(Self { event, json })
    }
}

/// One subscriber's side of the feed: the events to come, in order.
#[derive(Debug)]
pub struct Listener {
    rx: mpsc::UnboundedReceiver<Arc<Shared>>,
    queued: Arc<AtomicUsize>,
}

impl Listener {
    /// The next event; `None` once the feed is closed or dropped this subscriber.
    pub async fn recv(&mut self) -> Option<Arc<Shared>> {
        let event = self.rx.recv().await?;
        self.queued.fetch_sub(event.json.len(), Ordering::Relaxed);
        Some(event)
    }
}

/// The feed's side of one subscriber: its channel and the bytes it has not read.
struct Subscriber {
    tx: mpsc::UnboundedSender<Arc<Shared>>,
    queued: Arc<AtomicUsize>,
}

impl Subscriber {
    /// Queues `event`; false (the subscriber is let go) when it is gone or too far behind.
    fn offer(&self, event: &Arc<Shared>) -> bool {
        let bytes = event.json.len();
        if self.queued.load(Ordering::Relaxed) + bytes > SUBSCRIBER_BYTES {
            return false;
        }
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        self.tx.send(event.clone()).is_ok()
    }
}

/// The events of one run and who listens to them.
#[derive(Default)]
pub struct Feed {
    events: VecDeque<Arc<Shared>>,
    /// The numbers of the metrics events kept, oldest first.
    metrics: VecDeque<u64>,
    subscribers: Vec<Subscriber>,
    /// Numbers at or below this were handed out by an earlier broker process.
    base: u64,
}

impl Feed {
    /// A feed that continues from earlier events.
    pub fn from_events(events: Vec<RunEvent>) -> Self {
        let metrics = events.iter().filter(|e| matches!(e.kind, EventKind::Metrics { .. })).map(|e| e.seq).collect();
        Self { events: events.into_iter().map(Shared::new).collect(), metrics, subscribers: Vec::new(), base: 0 }
    }

    /// A feed whose numbers continue after `seq` (a run carried on by a restarted broker).
    pub fn after(seq: u64) -> Self {
        Self { events: VecDeque::new(), metrics: VecDeque::new(), subscribers: Vec::new(), base: seq }
    }

    /// The number of the last event, 0 before any.
    pub fn last_seq(&self) -> u64 {
        self.events.back().map_or(self.base, |e| e.event.seq)
    }

    /// The number of the oldest event kept (the next one's when none is kept).
    pub fn kept_from(&self) -> u64 {
        self.events.front().map_or(self.last_seq() + 1, |e| e.event.seq)
    }

    /// Appends an event and hands it to every subscriber that keeps up.
    pub fn publish(&mut self, kind: EventKind) {
        let event = RunEvent { seq: self.last_seq() + 1, at: Utc::now(), kind };
        if matches!(event.kind, EventKind::Metrics { .. }) {
            self.metrics.push_back(event.seq);
            if self.metrics.len() > METRIC_EVENTS_KEPT {
                if let Some(oldest) = self.metrics.pop_front() {
                    let at = self.events.partition_point(|e| e.event.seq < oldest);
                    if self.events.get(at).is_some_and(|e| e.event.seq == oldest) {
                        self.events.remove(at);
                    }
                }
            }
        }
        let shared = Shared::new(event);
        self.events.push_back(shared.clone());
        if self.events.len() > FEED_EVENTS {
            if let Some(gone) = self.events.pop_front() {
                self.metrics.retain(|seq| *seq != gone.event.seq);
            }
        }
        self.subscribers.retain(|s| s.offer(&shared));
    }

    /// How many subscribers are still listening.
    pub fn subscribers(&mut self) -> usize {
        self.subscribers.retain(|s| !s.tx.is_closed());
        self.subscribers.len()
    }

    /// Events after `since`, and the subscriber's side for the ones to come.
    pub fn subscribe(&mut self, since: u64) -> (Vec<Arc<Shared>>, Listener) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        self.subscribers.push(Subscriber { tx, queued: queued.clone() });
        (self.since(since), Listener { rx, queued })
    }

    /// Events after `since`.
    pub fn since(&self, since: u64) -> Vec<Arc<Shared>> {
        let start = self.events.partition_point(|e| e.event.seq <= since);
        self.events.range(start..).cloned().collect()
    }

    /// Closes every subscriber's channel and hands back the events.
    pub fn close(&mut self) -> Vec<RunEvent> {
        self.subscribers.clear();
        std::mem::take(&mut self.events).into_iter().map(|e| Arc::try_unwrap(e).map_or_else(|e| e.event.clone(), |e| e.event)).collect()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: RunState) -> EventKind {
        EventKind::Run { state, reason: None }
    }

    impl Listener {
        fn try_recv(&mut self) -> Option<Arc<Shared>> {
            let event = self.rx.try_recv().ok()?;
            self.queued.fetch_sub(event.json.len(), Ordering::Relaxed);
            Some(event)
        }
    }

    #[test]
    fn late_subscribers_get_the_backlog_after_since() {
        let mut feed = Feed::default();
        feed.publish(run(RunState::Pending));
        feed.publish(run(RunState::Initializing));
        let (backlog, mut rx) = feed.subscribe(1);
        assert_eq!(backlog.iter().map(|e| e.event.seq).collect::<Vec<_>>(), [2]);
        feed.publish(run(RunState::Running));
        let next = rx.try_recv().unwrap();
        assert_eq!(next.event.seq, 3);
        assert_eq!(next.json, serde_json::to_string(&next.event).unwrap(), "the JSON is the event's");
    }

    #[test]
    fn the_feed_keeps_its_last_events_and_says_where_they_start() {
        let mut feed = Feed::default();
        for _ in 0..FEED_EVENTS + 5 {
            feed.publish(run(RunState::Running));
        }
        assert_eq!(feed.events.len(), FEED_EVENTS);
        assert_eq!(feed.kept_from(), 6);
        assert_eq!(feed.last_seq(), (FEED_EVENTS + 5) as u64);
        let (backlog, _) = feed.subscribe(2);
        assert_eq!(backlog.first().map(|e| e.event.seq), Some(6), "what is kept, from its start");
        assert_eq!(backlog.len(), FEED_EVENTS);
        assert_eq!(Feed::after(41).kept_from(), 42);
    }

    fn window() -> EventKind {
        EventKind::Metrics {
            step: "s".into(),
            start_ms: 0,
            nodes: 1,
            counters: Default::default(),
            timers: Default::default(),
            histograms: Default::default(),
            cpu: Default::default(),
            regions: Default::default(),
            overflow: 0,
        }
    }

    #[test]
    fn only_the_last_metrics_events_are_kept_and_every_state_change() {
        let mut feed = Feed::default();
        feed.publish(run(RunState::Running));
        for _ in 0..METRIC_EVENTS_KEPT + 30 {
            feed.publish(window());
        }
        feed.publish(run(RunState::Completed));
        let kept = feed.since(0);
        assert_eq!(kept.len(), METRIC_EVENTS_KEPT + 2);
        assert_eq!(kept[0].event.seq, 1, "the first state change is still there");
        assert_eq!(kept[1].event.seq, 32, "the 30 oldest windows are gone");
        assert_eq!(kept.last().map(|e| e.event.seq), Some((METRIC_EVENTS_KEPT + 32) as u64));
        assert_eq!(feed.kept_from(), 1);
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped_not_waited_for() {
        let mut feed = Feed::default();
        let (_, mut slow) = feed.subscribe(0);
        let (_, mut reading) = feed.subscribe(0);
        let size = Shared::new(RunEvent { seq: 1, at: Utc::now(), kind: run(RunState::Running) }).json.len();
        let fit = SUBSCRIBER_BYTES / size;
        let mut read = 0;
        for _ in 0..fit + 10 {
            feed.publish(run(RunState::Running));
            while reading.try_recv().is_some() {
                read += 1;
            }
        }
        assert_eq!(feed.subscribers.len(), 1, "the one that reads stays");
        assert_eq!(read, fit + 10);
        let mut got = 0;
        while slow.try_recv().is_some() {
            got += 1;
        }
        assert!(got > fit / 2 && got < fit + 10, "it received what fit in its bytes ({got}, about {fit}), then its channel closed");
        assert_eq!(feed.last_seq(), (fit + 10) as u64);
    }

    #[test]
    fn subscribers_share_each_event() {
        let mut feed = Feed::default();
        let mut listeners: Vec<Listener> = (0..300).map(|_| feed.subscribe(0).1).collect();
        feed.publish(window());
        let first = listeners[0].try_recv().unwrap();
        let last = listeners[299].try_recv().unwrap();
        assert!(Arc::ptr_eq(&first, &last), "one copy for every subscriber");
        assert_eq!(Arc::strong_count(&first), 2 + 298 + 1, "the feed's, these two, and the 298 still queued");
    }
}
