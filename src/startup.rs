//! The one place that wires the system: database, actors, HTTP server.
//!
//! `Application::build` binds its own listener, so `server.port = 0` gives a
//! free port that tests read back with `port()`.

use std::net::TcpListener;

use actix::Actor;
use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::{bail, Context as _};
use actix::Addr;
use loads_actors::broker::BrokerActor;
use loads_actors::pool::Ec2PoolActor;
use loads_actors::{store, CatalogActor};
use tracing_actix_web::TracingLogger;

use crate::api::{self, auth::Tokens, ApiState};
use crate::config::Settings;
use crate::telemetry::{self, RequestSpans};

/// The running actor system: what the web layer and the CLI talk to.
#[derive(Clone)]
pub struct Actors {
    /// Projects, plans, steps and run records.
    pub catalog: Addr<CatalogActor>,
    /// The runs.
    pub broker: Addr<BrokerActor>,
}

impl Actors {
    /// Connects the database (applying migrations) and starts the actors.
    /// Must be called inside an actix system.
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let db = store::connect(settings.database.url.expose())
            .await
            .with_context(|| format!("cannot open the database {}", settings.database.url.masked()))?;
        let catalog = CatalogActor::new(db.clone(), settings.limits()).start();
        let pool = Ec2PoolActor::local(settings.broker.id.clone()).await.start();
        let broker = BrokerActor::new(db, pool, settings.run_settings()).start();
        Ok(Self { catalog, broker })
    }
}

/// A built, bound, not yet running broker.
pub struct Application {
    port: u16,
    server: Server,
}

/// Stops a running server.
pub use actix_web::dev::ServerHandle;

impl Application {
    /// Connects the database (applying migrations), starts the actors and binds the server.
    /// Must be called inside an actix system.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        if !settings.auth_enabled() && !settings.binds_loopback_only() {
            bail!(
                "refusing to serve on {} without authentication: set auth.tokens (LOADS__AUTH__TOKENS) \
                 or bind a loopback address (server.host = \"127.0.0.1\")",
                settings.server.host
            );
        }
        let actors = Actors::start(settings).await?;
        let state = web::Data::new(ApiState {
            catalog: actors.catalog,
            broker: actors.broker,
            max_body_bytes: settings.server.max_body_bytes,
        });
        let tokens = web::Data::new(Tokens(settings.auth.tokens.iter().map(|t| t.expose().to_string()).collect()));

        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| format!("cannot bind {}:{}", settings.server.host, settings.server.port))?;
        let address = listener.local_addr()?;
        let server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(api::auth::require_token))
                .wrap(middleware::from_fn(telemetry::request_id_header))
                .wrap(TracingLogger::<RequestSpans>::new())
                .app_data(state.clone())
                .app_data(tokens.clone())
                .configure(api::configure)
        })
        .listen(listener)?
        .run();

        if settings.auth_enabled() {
            tracing::info!(%address, "loads listening; API tokens required");
        } else {
            tracing::warn!(%address, "loads listening without authentication (loopback only): set auth.tokens to require tokens");
        }
        Ok(Self { port: address.port(), server })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
