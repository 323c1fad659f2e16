//! Secrets by reference: an env value `secret:NAME` (in a plan's, a run's or a
//! step's environment) stands for the broker's secret `NAME`.
//!
//! Only the reference is stored, returned by the API or put on the feed; the
//! value is substituted when a container's environment is built, and masked
//! in every container output the broker keeps or serves.

use std::collections::BTreeMap;
use std::fmt;

use super::error::{FieldError, ValidationErrors};
use super::spec::{Env, PlanSpec};

/// What marks a value as a reference.
pub const PREFIX: &str = "secret:";

pub use loads_relay::mask::{Masker, MASK};

/// The broker's secrets, by name. Printing them shows names only.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The secret a value refers to, if it is a reference.
pub fn reference(value: &str) -> Option<&str> {
    value.strip_prefix(PREFIX)
}

impl Secrets {
    /// Secrets from name/value pairs.
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self(values)
    }

    /// A secret's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `text` with every secret value (4 characters or longer) replaced by `MASK`, longest first.
    pub fn mask(&self, text: &str) -> String {
        Masker::new(self.0.values().cloned()).mask(text).into_owned()
    }

    /// Every reference in a plan and a run env that names no configured secret, with its path.
    pub fn check(&self, plan: &PlanSpec, run_env: &Env) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        let mut check = |path: String, env: &Env| {
            for (key, value) in env {
                if let Some(name) = reference(value) {
                    if self.get(name).is_none() {
                        errors.push(FieldError::new(
                            format!("{path}{key}"),
                            format!("secret `{name}` is not configured (secrets.file, or the LOADS_SECRET_{name} variable of the broker)"),
                        ));
                    }
                }
            }
        };
        check("environment_data.".into(), &plan.environment_data);
        check("env.".into(), run_env);
        for (i, step) in plan.steps.iter().enumerate() {
            check(format!("steps[{i}].environment_data."), &step.environment_data);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new(BTreeMap::from([("API_KEY".into(), "s3cret-value".into()), ("PIN".into(), "12".into())]))
    }

    #[test]
    fn values_are_masked_and_never_printed() {
        let s = secrets();
        assert_eq!(s.mask("key=s3cret-value; again s3cret-value"), "key=********; again ********");
        assert_eq!(s.mask("pin 12"), "pin 12", "values this short would mask everything");
        assert_eq!(format!("{s:?}"), r#"{"API_KEY", "PIN"}"#);
    }

    #[test]
    fn unknown_references_are_named_by_path() {
        let mut plan = PlanSpec {
            name: "p".into(),
            description: None,
            enabled: true,
            environment_data: Env::from([("A".into(), "secret:API_KEY".into())]),
            dashboard: None,
            thresholds: Default::default(),
            compare: Default::default(),
            fail_on_regression: false,
            steps: vec![crate::domain::StepSpec::new("s", "i")],
        };
        plan.steps[0].environment_data.insert("B".into(), "secret:NOPE".into());
        let err = secrets().check(&plan, &Env::from([("C".into(), "secret:ALSO_NOPE".into())])).unwrap_err();
        let paths: Vec<String> = err.0.iter().map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["env.C", "steps[0].environment_data.B"]);
        assert!(err.0[1].to_string().contains("secret `NOPE` is not configured"));
    }
}
