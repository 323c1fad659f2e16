//! An actor's state writes, made one at a time in the order they were asked for.
//!
//! actix runs the futures an actor waits on (`ctx.wait`) newest first, so two
//! state writes asked for in one turn would reach the database in reverse,
//! and a final write could stop the actor before an earlier one ran. A
//! `Journal` holds the writes in a queue and waits on one at a time: each
//! job persists a state and then publishes it, so what subscribers see is
//! always already stored, in the order it happened. While a job runs the
//! actor handles no message (as with any `ctx.wait`).

use std::collections::VecDeque;

use actix::fut::LocalBoxActorFuture;
use actix::{Actor, ActorFutureExt, AsyncContext, Context};

/// The queue of an actor's pending state writes.
pub struct Journal<A: Actor> {
    pending: VecDeque<LocalBoxActorFuture<A, ()>>,
    busy: bool,
}

impl<A: Actor> Default for Journal<A> {
    fn default() -> Self {
        Self { pending: VecDeque::new(), busy: false }
    }
}

/// An actor that keeps a journal of its state writes.
pub trait Journaled: Actor<Context = Context<Self>> {
    /// The actor's journal.
    fn journal(&mut self) -> &mut Journal<Self>;
}

/// Queues `job` after every write asked for before it; it runs once those have.
pub fn record<A: Journaled>(act: &mut A, ctx: &mut Context<A>, job: LocalBoxActorFuture<A, ()>) {
    act.journal().pending.push_back(job);
    next(act, ctx);
}

fn next<A: Journaled>(act: &mut A, ctx: &mut Context<A>) {
    let journal = act.journal();
    if journal.busy {
        return;
    }
    let Some(job) = journal.pending.pop_front() else { return };
    journal.busy = true;
    ctx.wait(job.map(|(), act: &mut A, ctx: &mut Context<A>| {
        act.journal().busy = false;
        next(act, ctx);
    }));
}
