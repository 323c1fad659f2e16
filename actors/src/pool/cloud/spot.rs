//! Spot interruption notices: a leased spot node's instance metadata read over its SSH
//! connection until EC2 announces it will take the instance, and its step told.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::super::meter::Meter;
use super::super::NodeInterrupted;
use crate::infra::ssh::SshNode;
use crate::settings::CloudSettings;

/// The command that prints a node's spot interruption notice, if it has one: its instance
/// metadata `spot/instance-action`, read with an IMDSv2 token (a 404, and so a failure, without one).
fn spot_notice_command(metadata_url: &str) -> String {
    format!(
        "t=$(curl -sf -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' '{metadata_url}/latest/api/token') && \
         curl -sf -m 2 -H \"X-aws-ec2-metadata-token: $t\" '{metadata_url}/latest/meta-data/spot/instance-action'"
    )
}

/// A notice's action and time (`{"action": "terminate", "time": "2017-09-18T08:22:00Z"}`).
fn spot_notice(text: &str) -> Option<(String, String)> {
    let notice: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    let action = notice.get("action")?.as_str()?.to_string();
    let time = notice.get("time").and_then(|t| t.as_str()).unwrap_or_default().to_string();
    Some((action, time))
}

/// What watching a run's spot node needs.
#[derive(Clone)]
pub(super) struct SpotWatch {
    pub(super) cloud: Arc<CloudSettings>,
    pub(super) meter: Meter,
    pub(super) run_id: Uuid,
    pub(super) to: actix::Recipient<NodeInterrupted>,
}

/// Reads a spot node's interruption notice every `ec2.spot_notice_seconds` over its SSH
/// connection until there is one, and tells `to`; stops when the node is released.
pub(super) async fn watch_spot_notice(watch: SpotWatch, ssh: SshNode, node: String, instance: String) {
    let SpotWatch { cloud, meter, run_id, to } = watch;
    let command = spot_notice_command(&cloud.metadata_url);
    loop {
        tokio::time::sleep(cloud.spot_notice).await;
        match ssh.exec(&command).await {
            Ok((0, out)) => {
                if let Some((action, time)) = spot_notice(&out) {
                    tracing::warn!(%instance, %node, %action, %time, "spot interruption notice");
                    // Billed until EC2 takes it: the notice's time, else two minutes from now.
                    let taken = DateTime::parse_from_rfc3339(&time)
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_else(|_| meter.now() + chrono::Duration::minutes(2));
                    meter.ends_by(run_id, &instance, taken.max(meter.now()));
                    to.do_send(NodeInterrupted { node, instance, action, time, noticed_at: Utc::now() });
                    return;
                }
            }
            // No notice (the metadata answers 404), or the node is not answering: the step finds out.
            Ok(_) => {}
            Err(e) => tracing::debug!(%instance, error = %e, "could not read the spot interruption notice"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_gives_its_action_and_time_and_anything_else_is_none() {
        let notice = spot_notice(" {\"action\": \"terminate\", \"time\": \"2017-09-18T08:22:00Z\"}\n");
        assert_eq!(notice, Some(("terminate".to_string(), "2017-09-18T08:22:00Z".to_string())));
        assert_eq!(spot_notice("{\"action\": \"stop\"}"), Some(("stop".to_string(), String::new())));
        assert_eq!(spot_notice("<html>404 - Not Found</html>"), None);
        assert_eq!(spot_notice("{\"time\": \"2017-09-18T08:22:00Z\"}"), None, "no action, no notice");
    }

    #[test]
    fn the_notice_is_read_with_an_imdsv2_token_from_the_configured_address() {
        let command = spot_notice_command("http://127.0.0.1:9");
        assert!(command.contains("-X PUT") && command.contains("'http://127.0.0.1:9/latest/api/token'"), "{command}");
        assert!(command.contains("'http://127.0.0.1:9/latest/meta-data/spot/instance-action'"), "{command}");
    }
}
