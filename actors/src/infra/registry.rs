//! Credentials for pulling images from private registries: given per registry
//! host (`docker.registry_auth`, the password possibly a `secret:NAME`), or, for
//! Amazon ECR (`<account>.dkr.ecr.<region>.amazonaws.com`), an authorization
//! token fetched with the broker's AWS credentials and kept until shortly
//! before it expires. The engine that pulls (the broker's, or a node's through
//! SSH) gets them with the pull request; they are never written to a node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use tokio::sync::Mutex;

use crate::domain::secrets::Secrets;

/// Why no credentials could be had for a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A password names a secret that is not defined.
    #[error("docker.registry_auth.{registry}.password: {message}")]
    Secret {
        /// The registry host.
        registry: String,
        /// Why.
        message: String,
    },
    /// ECR refused or could not be reached.
    #[error("ECR authorization token for {registry}: {message}")]
    Ecr {
        /// The registry host.
        registry: String,
        /// Why.
        message: String,
    },
}

/// A registry's login as configured.
#[derive(Clone, Debug)]
pub struct Login {
    /// The user.
    pub username: String,
    /// The password, or `secret:NAME`.
    pub password: String,
}

/// An ECR token and when to stop using it.
#[derive(Clone, Debug)]
struct Token {
    credentials: DockerCredentials,
    renew_at: tokio::time::Instant,
}

/// Where pulls get their credentials.
#[derive(Clone, Debug, Default)]
pub struct Registries {
    logins: BTreeMap<String, Login>,
    /// ECR's endpoint instead of AWS's (a test double); `AWS_ENDPOINT_URL` works too.
    ecr_endpoint: Option<String>,
    tokens: Arc<Mutex<BTreeMap<String, Token>>>,
}

/// How long before its expiry an ECR token is fetched anew.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 60);

impl Registries {
    /// Logins by registry host (as images name it: `registry.example.com:5000`).
    pub fn new(logins: BTreeMap<String, Login>, ecr_endpoint: Option<String>) -> Self {
        Self { logins, ecr_endpoint, tokens: Arc::default() }
    }

    /// The credentials a pull of `image` needs, if any.
    pub async fn credentials_for(&self, image: &str, secrets: &Secrets) -> Result<Option<DockerCredentials>, RegistryError> {
        let registry = registry_of(image);
        if let Some(login) = self.logins.get(&registry) {
            let password = match crate::domain::secrets::reference(&login.password) {
                Some(name) => secrets.get(name).map(str::to_string).ok_or_else(|| RegistryError::Secret {
                    registry: registry.clone(),
                    message: format!("secret `{name}` is not configured (secrets.file, or the LOADS_SECRET_{name} variable of the broker)"),
                })?,
                None => login.password.clone(),
            };
            return Ok(Some(DockerCredentials {
                username: Some(login.username.clone()),
                password: Some(password),
                serveraddress: Some(registry),
                ..Default::default()
            }));
        }
        match ecr_region(&registry) {
            Some(region) => self.ecr_token(&registry, region).await.map(Some),
            None => Ok(None),
        }
    }

    async fn ecr_token(&self, registry: &str, region: &str) -> Result<DockerCredentials, RegistryError> {
        let mut tokens = self.tokens.lock().await;
        if let Some(token) = tokens.get(registry).filter(|t| t.renew_at > tokio::time::Instant::now()) {
            return Ok(token.credentials.clone());
        }
        let fail = |message: String| RegistryError::Ecr { registry: registry.to_string(), message };
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(aws_config::Region::new(region.to_string()));
        if let Some(url) = &self.ecr_endpoint {
            loader = loader.endpoint_url(url);
        }
        let client = aws_sdk_ecr::Client::new(&loader.load().await);
        let answer = client.get_authorization_token().send().await.map_err(|e| fail(aws_message(&e)))?;
        let data = answer.authorization_data().first().ok_or_else(|| fail("no authorization data in the answer".into()))?;
        let encoded = data.authorization_token().ok_or_else(|| fail("no token in the answer".into()))?;
        let (username, password) = decode_token(encoded).ok_or_else(|| fail("the token is not base64 of user:password".into()))?;
        let lifetime = data
            .expires_at()
            .and_then(|at| u64::try_from(at.secs() - chrono::Utc::now().timestamp()).ok())
            .map_or(Duration::from_secs(3600), Duration::from_secs);
        let credentials = DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        };
        let renew_at = tokio::time::Instant::now() + lifetime.saturating_sub(RENEW_BEFORE);
        tokens.insert(registry.to_string(), Token { credentials: credentials.clone(), renew_at });
        Ok(credentials)
    }
}

fn aws_message<E: std::error::Error + aws_sdk_ecr::error::ProvideErrorMetadata>(e: &E) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => {
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

/// An ECR token is base64 of `AWS:<password>`.
fn decode_token(encoded: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The registry host an image reference names (`docker.io` when it names none).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// The region of an ECR registry host (`123456789012.dkr.ecr.eu-west-1.amazonaws.com`).
fn ecr_region(registry: &str) -> Option<&str> {
    let rest = registry.split_once(".dkr.ecr.")?.1;
    let region = rest.strip_suffix(".amazonaws.com").or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
    (!region.is_empty() && !region.contains('.')).then_some(region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_name_their_registry_or_docker_hub() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("example/gen:1.2"), "docker.io");
        assert_eq!(registry_of("registry.example.com/team/gen:1"), "registry.example.com");
        assert_eq!(registry_of("127.0.0.1:5000/gen"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/gen"), "localhost");
        assert_eq!(ecr_region("123456789012.dkr.ecr.eu-west-1.amazonaws.com"), Some("eu-west-1"));
        assert_eq!(ecr_region("registry.example.com"), None);
        assert_eq!(ecr_region("x.dkr.ecr..amazonaws.com"), None);
    }

    #[test]
    fn an_ecr_token_is_user_and_password() {
        assert_eq!(decode_token("QVdTOnNlY3JldDpwYXJ0"), Some(("AWS".into(), "secret:part".into())));
        assert_eq!(decode_token("not base64!"), None);
    }

    #[tokio::test]
    async fn a_configured_login_resolves_its_secret() {
        let logins = BTreeMap::from([("127.0.0.1:5000".to_string(), Login { username: "ci".into(), password: "secret:REG".into() })]);
        let registries = Registries::new(logins, None);
        let secrets = Secrets::new(BTreeMap::from([("REG".to_string(), "hunter2".to_string())]));
        let creds = registries.credentials_for("127.0.0.1:5000/gen:1", &secrets).await.unwrap().expect("a login");
        assert_eq!((creds.username.as_deref(), creds.password.as_deref()), (Some("ci"), Some("hunter2")));
        assert!(registries.credentials_for("busybox", &secrets).await.unwrap().is_none());
        let err = registries.credentials_for("127.0.0.1:5000/gen:1", &Secrets::default()).await.unwrap_err();
        assert!(err.to_string().starts_with("docker.registry_auth.127.0.0.1:5000.password"), "{err}");
    }
}
