//! What a step's container is given: its image, environment, arguments, ports
//! and volumes, with every `$VAR` resolved.
//!
//! Precedence, lowest first: the plan's env defaults, the run env, the step's
//! env, the variables the broker injects. Values may refer to each other;
//! references are resolved recursively, and a cycle is an error.

use std::collections::BTreeMap;
use std::path::Path;

use super::interpolate::{self, RenderError};
use super::secrets::{self, Secrets};
use super::spec::{Env, StepSpec};
use super::validate::Limits;

/// A step's container, ready to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The image, interpolated.
    pub image: String,
    /// Where to load the image from, interpolated.
    pub image_source: Option<String>,
    /// The environment, `KEY=VALUE`, sorted by key.
    pub env: Vec<String>,
    /// Arguments appended to the image's command.
    pub args: Vec<String>,
    /// `(container port, host port)` pairs.
    pub ports: Vec<(u16, u16)>,
    /// Bind mounts, `host:container:ro|rw`.
    pub binds: Vec<String>,
}

const MAX_DEPTH: usize = 16;

struct Resolver<'a> {
    values: &'a BTreeMap<String, String>,
}

impl Resolver<'_> {
    fn resolve(&self, name: &str, depth: usize) -> Result<String, String> {
        let raw = self.values.get(name).ok_or_else(|| format!("unknown variable `${name}`"))?;
        self.render(raw, depth + 1)
    }

    fn render(&self, template: &str, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err("variables refer to each other in a cycle".to_string());
        }
        let missing = std::cell::RefCell::new(None);
        let out = interpolate::render(template, |name| match self.resolve(name, depth) {
            Ok(v) => Some(v),
            Err(e) => {
                missing.borrow_mut().get_or_insert(e);
                None
            }
        });
        match out {
            Ok(s) => Ok(s),
            Err(RenderError::Syntax(e)) => Err(e.to_string()),
            Err(RenderError::Unknown(name)) => Err(missing.into_inner().unwrap_or_else(|| format!("unknown variable `${name}`"))),
        }
    }
}

/// Resolves `step` for one container. `injected` holds the broker's variables
/// (`RUN_ID`, `STATSD_HOST`, ...); `limits` say where volumes and image
/// tarballs may come from (`volume_root`: where nodes mount from the broker's
/// own disk, the only directory they may mount from; its links are resolved
/// later, on the disk, by `infra::volumes`); `secret:NAME` values become the
/// secret's value, taken literally. Errors name the field.
pub fn resolve(
    step: &StepSpec,
    plan_env: &Env,
    run_env: &Env,
    injected: &Env,
    limits: &Limits,
    secrets: &Secrets,
) -> Result<Launch, String> {
    let mut values: BTreeMap<String, String> = plan_env.clone();
    values.extend(run_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    values.extend(step.environment_data.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (key, value) in values.iter_mut() {
        if let Some(name) = secrets::reference(value) {
            let secret = secrets.get(name).ok_or_else(|| format!("environment_data.{key}: secret `{name}` is not configured"))?;
            *value = secret.replace('$', "$$");
        }
    }
    values.extend(injected.iter().map(|(k, v)| (k.clone(), v.clone())));
    let r = Resolver { values: &values };
    let field = |name: &str, template: &str| r.render(template, 0).map_err(|e| format!("{name}: {e}"));

    let mut env = Vec::with_capacity(values.len());
    for key in values.keys() {
        let value = r.resolve(key, 0).map_err(|e| format!("environment_data.{key}: {e}"))?;
        env.push(format!("{key}={value}"));
    }
    let image = field("container_name", &step.container_name)?;
    let image_source = step.container_url.as_deref().map(|u| field("container_url", u)).transpose()?;
    if let Some(url) = &image_source {
        super::validate::check_image_url(url, limits).map_err(|e| format!("container_url: {e}"))?;
    }
    let args = match &step.additional_command_args {
        None => Vec::new(),
        Some(a) => shell_words::split(&field("additional_command_args", a)?).map_err(|e| format!("additional_command_args: {e}"))?,
    };
    let ports = step.port_mapping.as_deref().map(parse_ports).transpose()?.unwrap_or_default();
    let binds = match &step.volume_mapping {
        None => Vec::new(),
        Some(v) => parse_volumes(&field("volume_mapping", v)?, limits.volume_root.as_deref())?,
    };
    Ok(Launch { image, image_source, env, args, ports, binds })
}

/// The values of the secrets a step's containers are given (through the plan's,
/// the run's or the step's env), for the node's relay to mask.
pub fn secret_values(step: &StepSpec, plan_env: &Env, run_env: &Env, secrets: &Secrets) -> Vec<String> {
    let mut values: Vec<String> = plan_env
        .values()
        .chain(run_env.values())
        .chain(step.environment_data.values())
        .filter_map(|v| secrets::reference(v))
        .filter_map(|name| secrets.get(name))
        .map(str::to_string)
        .collect();
    values.sort();
    values.dedup();
    values
}

fn parse_ports(mapping: &str) -> Result<Vec<(u16, u16)>, String> {
    mapping
        .split(',')
        .map(|pair| {
            pair.trim()
                .split_once(':')
                .and_then(|(c, h)| Some((c.trim().parse().ok()?, h.trim().parse().ok()?)))
                .ok_or_else(|| format!("port_mapping: {pair:?} is not container:host"))
        })
        .collect()
}

fn parse_volumes(mapping: &str, root: Option<&Path>) -> Result<Vec<String>, String> {
    mapping
        .split(',')
        .map(|m| {
            let parts: Vec<&str> = m.trim().split(':').collect();
            let (container, host, mode) = match parts.as_slice() {
                [c, h] => (*c, *h, "ro"),
                [c, h, mode @ ("rw" | "ro")] => (*c, *h, *mode),
                _ => return Err(format!("volume_mapping: {m:?} is not /container:/host[:rw]")),
            };
            if !host.starts_with('/') {
                return Err(format!("volume_mapping: host path {host:?} is not an absolute path"));
            }
            super::validate::check_host_path(host, root).map_err(|e| format!("volume_mapping: {e}"))?;
            Ok(format!("{host}:{container}:{mode}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv() -> Limits {
        Limits { volume_root: Some("/srv".into()), ..Limits::default() }
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn value<'a>(launch: &'a Launch, key: &str) -> &'a str {
        launch.env.iter().find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key}"))
    }

    #[test]
    fn secret_references_become_their_values_taken_literally() {
        let mut step = StepSpec::new("s", "img");
        step.environment_data = env(&[("PASS", "secret:DB"), ("DSN", "db://u:$PASS@h")]);
        let secrets = Secrets::new(BTreeMap::from([("DB".to_string(), "p$w".to_string())]));
        let launch = resolve(&step, &Env::new(), &Env::new(), &Env::new(), &srv(), &secrets).unwrap();
        assert_eq!(value(&launch, "PASS"), "p$w");
        assert_eq!(value(&launch, "DSN"), "db://u:p$w@h");
        let err = resolve(&step, &Env::new(), &Env::new(), &Env::new(), &srv(), &Secrets::default()).unwrap_err();
        assert_eq!(err, "environment_data.PASS: secret `DB` is not configured");
    }

    #[test]
    fn step_env_wins_over_run_env_and_injected_wins_over_both() {
        let mut step = StepSpec::new("s", "img:$TAG");
        step.environment_data = env(&[("A", "step"), ("RUN_ID", "spoofed"), ("URL", "$TARGET/$RUN_ID")]);
        let launch = resolve(
            &step,
            &env(&[("A", "plan"), ("B", "plan"), ("TAG", "1")]),
            &env(&[("A", "run"), ("TARGET", "http://svc")]),
            &env(&[("RUN_ID", "r1")]),
            &srv(),
            &Secrets::default(),
        )
        .unwrap();
        assert_eq!(value(&launch, "A"), "step");
        assert_eq!(value(&launch, "B"), "plan");
        assert_eq!(value(&launch, "RUN_ID"), "r1");
        assert_eq!(value(&launch, "URL"), "http://svc/r1");
        assert_eq!(launch.image, "img:1");
    }

    #[test]
    fn arguments_are_split_like_a_shell_and_dollars_escape() {
        let mut step = StepSpec::new("s", "img");
        step.additional_command_args = Some("--url 'http://$HOST/a b' --price $$5".into());
        let launch = resolve(&step, &Env::new(), &Env::new(), &env(&[("HOST", "web")]), &srv(), &Secrets::default()).unwrap();
        assert_eq!(launch.args, ["--url", "http://web/a b", "--price", "$5"]);
    }

    #[test]
    fn cycles_and_unknown_variables_are_errors() {
        let mut step = StepSpec::new("s", "img");
        step.environment_data = env(&[("A", "$B"), ("B", "$A")]);
        let err = resolve(&step, &Env::new(), &Env::new(), &Env::new(), &srv(), &Secrets::default()).unwrap_err();
        assert!(err.contains("cycle"), "{err}");
        let step = StepSpec::new("s", "img:$NOPE");
        let err = resolve(&step, &Env::new(), &Env::new(), &Env::new(), &srv(), &Secrets::default()).unwrap_err();
        assert_eq!(err, "container_name: unknown variable `$NOPE`");
    }

    #[test]
    fn volumes_must_stay_under_the_root() {
        let mut step = StepSpec::new("s", "img");
        step.volume_mapping = Some("/data:/srv/$RUN_ID:rw,/cfg:/srv/cfg".into());
        let launch = resolve(&step, &Env::new(), &Env::new(), &env(&[("RUN_ID", "r1")]), &srv(), &Secrets::default()).unwrap();
        assert_eq!(launch.binds, ["/srv/r1:/data:rw", "/srv/cfg:/cfg:ro"]);
        for bad in ["/data:/etc", "/data:/srv/../etc"] {
            step.volume_mapping = Some(bad.into());
            assert!(resolve(&step, &Env::new(), &Env::new(), &Env::new(), &srv(), &Secrets::default()).is_err(), "{bad}");
        }
    }
}
