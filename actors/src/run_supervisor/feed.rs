//! The run's live feed as others reach it: merged windows put on it, subscriptions
//! with their backlog, the live output of the run's containers, and the events
//! handed to the broker when the run ends.

use std::sync::Arc;

use actix::{Context, Handler, Message, ResponseActFuture, WrapFuture};
use uuid::Uuid;

use super::RunSupervisor;
use crate::domain::views::{ContainerView, RunView};
use crate::domain::{DomainError, LimitCode};
use crate::feed::{EventKind, Listener, RunEvent, Shared};
use crate::metrics::MetricsPublished;
use crate::step::StepLogs;
use crate::store::runs;

/// A run has ended; its events are handed over for late subscribers.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RunEnded {
    /// The run.
    pub run_id: Uuid,
    /// Every event of its feed.
    pub events: Vec<RunEvent>,
}

impl Handler<MetricsPublished> for RunSupervisor {
    type Result = ();

    fn handle(&mut self, msg: MetricsPublished, _: &mut Context<Self>) {
        self.publish_window(msg);
    }
}

impl RunSupervisor {
    /// Puts a merged window of a step on the feed.
    pub(super) fn publish_window(&mut self, msg: MetricsPublished) {
        self.feed.publish(EventKind::Metrics {
            step: msg.step,
            start_ms: msg.start_ms,
            nodes: msg.nodes,
            counters: msg.counters,
            timers: msg.timers,
            histograms: msg.histograms,
            cpu: msg.cpu,
            regions: msg.regions,
            overflow: msg.overflow,
        });
    }
}

/// A subscription to a run's feed.
#[derive(Debug)]
pub struct Subscription {
    /// The run as stored now.
    pub snapshot: RunView,
    /// The number of the last event when the snapshot was taken.
    pub seq: u64,
    /// The number of the oldest event the feed still keeps: a `since` before it missed
    /// the events in between (the snapshot has the run as it is now).
    pub kept_from: u64,
    /// Events after the `since` asked for.
    pub backlog: Vec<Arc<Shared>>,
    /// Events to come; `None` when the run is over.
    pub live: Option<Listener>,
}

/// Subscribes to the run's feed from event `since` on.
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscription, DomainError>")]
pub struct SubscribeSupervised {
    /// The last event the subscriber has; 0 for all.
    pub since: u64,
}

impl Handler<SubscribeSupervised> for RunSupervisor {
    type Result = ResponseActFuture<Self, Result<Subscription, DomainError>>;

    fn handle(&mut self, msg: SubscribeSupervised, _: &mut Context<Self>) -> Self::Result {
        let max = self.settings.max_subscribers_per_run;
        if self.feed.subscribers() >= max {
            let refused = DomainError::Limit {
                code: LimitCode::TooManySubscribers,
                message: format!("this run already has {max} live subscribers (limits.max_subscribers_per_run); try again later"),
            };
            return Box::pin(actix::fut::ready(Err(refused)));
        }
        let (seq, kept_from) = (self.feed.last_seq(), self.feed.kept_from());
        let (backlog, live) = self.feed.subscribe(msg.since);
        let (db, run_id) = (self.db.clone(), self.run_id);
        Box::pin(
            async move {
                let snapshot = runs::get(&db, run_id).await?;
                Ok(Subscription { snapshot, seq, kept_from, backlog, live: Some(live) })
            }
            .into_actor(self),
        )
    }
}

/// The output of the run's containers that are not removed yet, optionally of one step (by name) and node.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ContainerView>")]
pub struct RunLiveLogs {
    /// Only this step.
    pub step: Option<String>,
    /// Only this node.
    pub node: Option<String>,
    /// Keep only the last lines of each.
    pub tail: Option<usize>,
}

impl Handler<RunLiveLogs> for RunSupervisor {
    type Result = actix::ResponseFuture<Vec<ContainerView>>;

    fn handle(&mut self, msg: RunLiveLogs, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self
            .steps
            .values()
            .filter(|s| msg.step.as_ref().is_none_or(|wanted| *wanted == s.view.spec.name))
            .filter_map(|s| s.addr.as_ref())
            .map(|addr| addr.send(StepLogs { node: msg.node.clone(), tail: msg.tail }))
            .collect();
        Box::pin(async move { futures_util::future::join_all(asks).await.into_iter().flatten().flatten().collect() })
    }
}
