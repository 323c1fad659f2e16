//! The verdict on a finished run, and the saturated generators that make its numbers
//! untrustworthy.

use super::shown;
use crate::domain::life::Ending;
use crate::domain::thresholds::number_text;
use crate::domain::views::{ThresholdState, ThresholdView, Verdict};

/// A generator node that ran its CPU flat out for part of its step.
#[derive(Clone, Debug, PartialEq)]
pub struct Saturation {
    /// The step.
    pub step: String,
    /// The node.
    pub node: String,
    /// Windows (seconds) above the busy line.
    pub busy_seconds: u64,
    /// Their share of the node's windows.
    pub share: f64,
    /// The busy line, percent CPU.
    pub cpu_percent: f64,
}

/// The verdict on a run that ended for `ending`, with why. Precedence: a user's
/// abort, then the run's own failure (error), then numbers that cannot be trusted
/// (invalid: numbers missing, or a saturated generator), then failed thresholds or, with
/// `fail_on_regression`, broken regression rules; else passed.
pub fn verdict(
    ending: &Ending,
    thresholds: &[ThresholdView],
    saturated: &[Saturation],
    lost: &[String],
    regressions: &[String],
    fail_on_regression: bool,
) -> (Verdict, String) {
    let failed: Vec<String> = thresholds
        .iter()
        .filter(|t| t.state == ThresholdState::Failed)
        .map(|t| {
            let scope = t.step.as_ref().map(|s| format!(" (step {s:?})")).unwrap_or_default();
            let how = match (t.value, &t.note) {
                (_, Some(note)) => note.clone(),
                (Some(v), None) => format!("value {}", shown(v)),
                (None, None) => "no value".into(),
            };
            format!("{} {}{scope}: {how}", t.metric, t.threshold)
        })
        .collect();
    let regressed =
        if regressions.is_empty() { String::new() } else { format!("regressed against the baseline: {}", regressions.join("; ")) };
    match ending {
        Ending::Aborted => return (Verdict::Aborted, "the run was aborted".into()),
        Ending::OverBudget(reason) => return (Verdict::Aborted, format!("the run was aborted: {reason}")),
        Ending::StepFailed(reason) | Ending::Lost(reason) => return (Verdict::Error, format!("the run failed: {reason}")),
        Ending::Finished | Ending::Breached(_) => {}
    }
    if !lost.is_empty() {
        return (Verdict::Invalid, format!("numbers are missing: {}", lost.join("; ")));
    }
    if let Some(s) = saturated.first() {
        let others = if saturated.len() > 1 { format!(" (and {} more node(s))", saturated.len() - 1) } else { String::new() };
        let reason = format!(
            "generator node {} of step {:?} ran its CPU above {}% for {} s ({:.0}% of its windows){others}: \
             the numbers show the generator's limits, not the service's",
            s.node,
            s.step,
            number_text(s.cpu_percent),
            s.busy_seconds,
            s.share * 100.0
        );
        return (Verdict::Invalid, reason);
    }
    if let Ending::Breached(reason) = ending {
        let rest: Vec<&String> = failed.iter().filter(|f| !reason.contains(f.split(':').next().unwrap_or_default())).collect();
        let more = if rest.is_empty() {
            String::new()
        } else {
            format!("; also failed: {}", rest.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "))
        };
        return (Verdict::Failed, format!("{reason} (abort_on_fail){more}"));
    }
    if !failed.is_empty() {
        return (Verdict::Failed, format!("thresholds failed: {}", failed.join("; ")));
    }
    if !regressed.is_empty() && fail_on_regression {
        return (Verdict::Failed, regressed);
    }
    let held = match thresholds.len() {
        0 => "the run completed; the plan has no thresholds".to_string(),
        1 => "its threshold held".to_string(),
        n => format!("all {n} thresholds held"),
    };
    if regressed.is_empty() {
        (Verdict::Passed, held)
    } else {
        (Verdict::Passed, format!("{held}; {regressed} (fail_on_regression is off)"))
    }
}
