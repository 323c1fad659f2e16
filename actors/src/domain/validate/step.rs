//! A step's fields and the checks of their forms (DNS names, port and volume
//! mappings, image URLs), and whether this broker can run a plan (`runnable`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::{join, Limits, Scope, Walker, MONITOR_NAME, STEP_FIELDS};
use crate::domain::error::{FieldError, ValidationErrors};
use crate::domain::interpolate::{self, INJECTED_VARIABLES};
use crate::domain::spec::{defaults, Env, Market, PlanSpec, StepSpec};

impl Walker<'_> {
    pub(super) fn step(&mut self, v: &Value, path: &str) -> Option<StepSpec> {
        let m = self.object(v, path, STEP_FIELDS)?;
        let mut step = StepSpec::new(String::new(), String::new());
        step.monitor = self.boolean(m, path, "monitor", false);
        // The original fixed its monitor step's name (and image, ports, timings): loads v2 files give none.
        step.name = if step.monitor && m.get("name").is_none_or(Value::is_null) { MONITOR_NAME.to_string() } else { self.name(m, path) };
        step.service = self.boolean(m, path, "service", false);
        step.thresholds = self.thresholds(m, path, Scope::Step);
        step.required = self.boolean(m, path, "required", true);
        step.prune_running = self.boolean(m, path, "prune_running", true);

        let count = self.whole(m, path, "instance_count", u64::from(defaults::INSTANCE_COUNT));
        let cap = u64::from(self.limits.max_instance_count);
        if count == 0 {
            self.error(join(path, "instance_count"), "must be at least 1");
        } else if count > cap {
            self.error(join(path, "instance_count"), format!("must be at most {cap} (limits.max_instance_count)"));
        }
        step.instance_count = u32::try_from(count.min(cap)).unwrap_or(defaults::INSTANCE_COUNT);
        if m.get("min_nodes").is_some_and(|v| !v.is_null()) {
            let min = self.whole(m, path, "min_nodes", count);
            if min == 0 || min > count {
                self.error(join(path, "min_nodes"), format!("must be from 1 to instance_count ({count})"));
            }
            step.min_nodes = u32::try_from(min.clamp(1, count.max(1))).ok();
        }

        if let Some(t) = self.string(m, path, "instance_type", false) {
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                self.error(join(path, "instance_type"), "must be a machine type such as \"t3.micro\"");
            }
            step.instance_type = t;
        }
        if let Some(regions) = m.get("instance_region").filter(|v| !v.is_null()) {
            if let Some(regions) = self.regions(regions, &join(path, "instance_region")) {
                step.instance_region = regions;
            }
        }
        if let Some(market) = self.string(m, path, "market", false) {
            match Market::parse(&market) {
                Some(known) => step.market = known,
                None => self.error(join(path, "market"), format!("must be {}, not {market:?}", Market::NAMES)),
            }
        }
        step.run_delay = self.seconds(m, path, "run_delay", defaults::RUN_DELAY);
        step.run_max_time = self.seconds(m, path, "run_max_time", defaults::RUN_MAX_TIME);
        step.node_delay = self.seconds(m, path, "node_delay", defaults::NODE_DELAY);
        let last_start = step.node_delay.saturating_mul(u64::from(step.instance_count.saturating_sub(1)));
        if step.run_max_time > 0 && step.node_delay > 0 && last_start >= step.run_max_time {
            self.error(
                join(path, "node_delay"),
                format!(
                    "the last of {} nodes would start {last_start} s after the first, at or past run_max_time ({} s), \
                     so it would never run: shorten node_delay or lengthen run_max_time",
                    step.instance_count, step.run_max_time
                ),
            );
        }

        step.container_name = self.string(m, path, "container_name", !step.monitor).unwrap_or_default();
        step.container_url = self.string(m, path, "container_url", false);
        step.container_sha256 = self.string(m, path, "container_sha256", false).map(|s| s.to_ascii_lowercase());
        if let Some(sha) = &step.container_sha256 {
            if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                self.error(join(path, "container_sha256"), "must be a SHA-256 digest: 64 hexadecimal digits");
            } else if step.container_url.is_none() {
                self.error(join(path, "container_sha256"), "checks the container_url tarball; give container_url too");
            }
        }
        if let Some(url) = &step.container_url {
            if let Err(why) = check_image_url(url, self.limits) {
                self.error(join(path, "container_url"), why);
            }
        }
        step.environment_data = self.env(m, path);
        step.additional_command_args = self.string(m, path, "additional_command_args", false);
        step.docker_series = self.string(m, path, "docker_series", false);

        step.dns_name = self.string(m, path, "dns_name", false);
        if let Some(name) = &step.dns_name {
            if let Err(why) = check_dns_name(name) {
                self.error(join(path, "dns_name"), why);
            }
        }
        step.port_mapping = self.string(m, path, "port_mapping", false);
        if let Some(ports) = &step.port_mapping {
            for why in check_port_mapping(ports) {
                self.error(join(path, "port_mapping"), why);
            }
        }
        step.volume_mapping = self.string(m, path, "volume_mapping", false);
        if let Some(volumes) = &step.volume_mapping {
            for why in check_volume_mapping(volumes, None) {
                self.error(join(path, "volume_mapping"), why);
            }
            // Where a volume may come from is this broker's to say, not the plan's: a plan
            // written for nodes of their own imports here, and its runs are refused at start.
            if let Some(root) = self.limits.volume_root.as_deref() {
                for why in check_volume_mapping(volumes, Some(root)) {
                    self.warnings.push(FieldError::new(join(path, "volume_mapping"), format!("{why}; a run of it is refused here")));
                }
            }
        }
        if step.monitor {
            self.warnings.push(FieldError::new(
                join(path, "monitor"),
                "a monitor step runs no container: the run's metrics go to an InfluxDB database of its own (loads<run id>), \
                 which its dashboard reads; without influx.url the step is skipped",
            ));
        }
        if step.service && step.run_max_time != 0 {
            self.warnings.push(FieldError::new(
                join(path, "run_max_time"),
                "a service step runs until every other step has finished; run_max_time still stops it early",
            ));
        }
        Some(step)
    }

    /// Every `$VAR` in the interpolated fields of `step` must be defined.
    pub(super) fn step_variables(&mut self, step: &StepSpec, plan_env: &Env, run_env: &Env, path: &str) {
        let known: BTreeSet<&str> = INJECTED_VARIABLES
            .iter()
            .copied()
            .chain(step.environment_data.keys().map(String::as_str))
            .chain(plan_env.keys().map(String::as_str))
            .chain(run_env.keys().map(String::as_str))
            .collect();
        let fields = [
            ("container_name", Some(&step.container_name)),
            ("container_url", step.container_url.as_ref()),
            ("additional_command_args", step.additional_command_args.as_ref()),
            ("volume_mapping", step.volume_mapping.as_ref()),
        ];
        let env_fields = step.environment_data.iter().map(|(k, v)| (format!("environment_data.{k}"), Some(v)));
        let all = fields.into_iter().map(|(k, v)| (k.to_string(), v)).chain(env_fields);
        for (field, template) in all {
            let Some(template) = template else { continue };
            match interpolate::variables(template) {
                Err(e) => self.error(join(path, &field), e.to_string()),
                Ok(vars) => {
                    for var in vars.into_iter().filter(|v| !known.contains(v)) {
                        self.error(
                            join(path, &field),
                            format!(
                                "unknown variable `${var}`: define it in the step's or the plan's environment_data, \
                                 pass it in the run env, or use one of {}",
                                INJECTED_VARIABLES.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
}

pub(super) fn check_dns_name(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{name:?} is not a valid host name (labels of letters, digits and -, separated by dots)"));
    }
    Ok(())
}

pub(super) fn check_port_mapping(ports: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut host_ports = BTreeSet::new();
    for pair in ports.split(',').map(str::trim) {
        let parsed = pair
            .split_once(':')
            .and_then(|(c, h)| Some((c.trim().parse::<u16>().ok()?, h.trim().parse::<u16>().ok()?)))
            .filter(|(c, h)| *c > 0 && *h > 0);
        match parsed {
            None => problems.push(format!("{pair:?} must be container_port:host_port with ports 1-65535")),
            Some((_, host)) if !host_ports.insert(host) => problems.push(format!("host port {host} is mapped twice")),
            Some(_) => {}
        }
    }
    problems
}

/// Whether this broker can run a valid plan, apart from what the plan itself is: every
/// volume's host path under `docker.volume_root` where nodes share the broker's disk.
/// Checked when a run starts; import only warns.
pub fn runnable(plan: &PlanSpec, limits: &Limits) -> Result<(), ValidationErrors> {
    let Some(root) = limits.volume_root.as_deref() else { return Ok(()) };
    let problems: Vec<FieldError> = plan
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| Some((i, step, step.volume_mapping.as_deref()?)))
        .flat_map(|(i, step, volumes)| {
            check_volume_mapping(volumes, Some(root))
                .into_iter()
                .map(move |why| FieldError::new(format!("steps[{i}].volume_mapping"), format!("step {:?}: {why}", step.name)))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(problems))
    }
}

pub(super) fn check_volume_mapping(volumes: &str, root: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    for mapping in volumes.split(',').map(str::trim) {
        let parts: Vec<&str> = mapping.split(':').collect();
        let host = match parts.as_slice() {
            [c, h] | [c, h, "rw" | "ro"] if c.starts_with('/') && (h.starts_with('/') || h.starts_with('$')) => *h,
            _ => {
                problems.push(format!("{mapping:?} must be /container/path:/host/path with an optional :rw or :ro"));
                continue;
            }
        };
        if let Err(why) = check_host_path(host, root) {
            problems.push(why);
        }
    }
    problems
}

/// A volume's host path may not climb with `..`, and where the broker's own
/// disk is mounted from, its literal part (up to the first `$VARIABLE`) must
/// lie under the volume root (or lead to it). Symbolic links are followed at
/// run time, when the path is resolved on the disk itself.
pub fn check_host_path(host: &str, root: Option<&Path>) -> Result<(), String> {
    let path = Path::new(host);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("host path {host:?} must not contain `..`"));
    }
    let Some(root) = root else { return Ok(()) };
    let literal: PathBuf = path.components().take_while(|c| !c.as_os_str().to_string_lossy().contains('$')).collect();
    let complete = !host.contains('$');
    let inside = literal.starts_with(root) || (!complete && root.starts_with(&literal));
    if host.starts_with('/') && !inside {
        return Err(format!(
            "host path {host:?} is outside the volume root {} (docker.volume_root): nodes on this broker's machine mount only from there",
            root.display()
        ));
    }
    Ok(())
}

/// `container_url`: an http(s) URL (not on a loopback address unless allowed), or
/// a `file://` URL or absolute path under the image root.
pub fn check_image_url(url: &str, limits: &Limits) -> Result<(), String> {
    if let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if host.starts_with('[') {
            host.split(']').next().unwrap_or_default().trim_start_matches('[')
        } else {
            host.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        if !limits.allow_loopback_image_urls && is_loopback_name(host) {
            return Err(format!("{url:?} is on a loopback address, the broker's own; allowed only with docker.allow_loopback_image_urls"));
        }
        return Ok(());
    }
    let local = url.strip_prefix("file://").unwrap_or(url);
    if local.starts_with('/') || local.starts_with('$') || url.starts_with("file://") {
        let Some(root) = &limits.image_root else {
            return Err(format!("{url:?} is on the broker's disk; set docker.image_root to the directory image tarballs may be read from"));
        };
        if !local.starts_with('$')
            && (Path::new(local).components().any(|c| matches!(c, Component::ParentDir)) || !Path::new(local).starts_with(root))
        {
            return Err(format!("{url:?} is outside the image root {} (docker.image_root)", root.display()));
        }
        return Ok(());
    }
    if url.starts_with('$') {
        return Ok(());
    }
    Err(format!("{url:?} must be an http:// or https:// URL, or a file under docker.image_root"))
}

/// Whether a host name or address is this machine's loopback.
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}
