//! The one place that wires the system: database, actors, HTTP server.
//!
//! `Application::build` binds its own listener, so `server.port = 0` gives a
//! free port that tests read back with `port()`.

use std::net::{SocketAddr, TcpListener};

use actix::Actor;
use actix::Addr;
use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::{bail, Context as _};
use loads_actors::broker::BrokerActor;
use loads_actors::metrics::MetricsActor;
use loads_actors::pool::Ec2PoolActor;
use loads_actors::{store, CatalogActor};
use tracing_actix_web::TracingLogger;

use crate::api::browser::BrowserPolicy;
use crate::api::ingest::{self, IngestState};
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
    /// Nodes and instances.
    pub pool: Addr<Ec2PoolActor>,
    /// The runs' metrics.
    pub metrics: Addr<MetricsActor>,
    /// The metrics ingest listener, to stop with the rest.
    pub ingest: ServerHandle,
    /// Its port.
    pub ingest_port: u16,
}

impl Actors {
    /// Connects the database (applying migrations) and starts the actors.
    /// Must be called inside an actix system.
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let db = store::connect(settings.database.url.expose())
            .await
            .with_context(|| format!("cannot open the database {}", settings.database.url.masked()))?;
        let catalog = CatalogActor::new(db.clone(), settings.limits()).start();
        let tls = settings.tls.tls()?;
        let influx = settings.influx.client(&tls);
        if let Some(influx) = &influx {
            if let Err(e) = influx.ensure_database().await {
                tracing::warn!(error = %e, "InfluxDB is not answering; windows will be logged as not written");
            }
        }
        // Supervised: should it fail, it starts again from the runs' saved totals, at the same address.
        let collector = MetricsActor::new(db.clone(), influx, settings.grafana.dashboards(&tls), settings.metrics.max_series_per_step);
        let metrics = actix::Supervisor::start(move |_| collector);
        let (ingest, ingest_address) = start_ingest(settings, metrics.clone())?;
        let endpoint = (!settings.ec2.endpoint_url.is_empty()).then_some(settings.ec2.endpoint_url.as_str());
        let mut regions = Vec::new();
        for region in settings.region_names() {
            let timeout = std::time::Duration::from_secs(settings.ec2.request_timeout_seconds);
            regions.push(loads_actors::infra::ec2::Region::connect(&region, endpoint, timeout).await);
        }
        let mut pool = Ec2PoolActor::local(settings.broker.id.clone())
            .await
            .with_regions(regions)
            .with_ingest(ingest_address)
            .with_meter_clock(settings.budget.clock.clone());
        if let Some(cloud) = settings.cloud()? {
            pool = pool.with_cloud(cloud);
        }
        let pool = pool.start();
        let mut run_settings = settings.run_settings(&tls);
        run_settings.secrets = settings.secrets(std::env::vars())?;
        run_settings.relay_ca = settings.relay_ca(std::env::vars())?;
        run_settings.cost = settings.cost()?;
        let broker = BrokerActor::new(db, pool.clone(), metrics.clone(), run_settings).start();
        Ok(Self { catalog, broker, pool, metrics, ingest, ingest_port: ingest_address.port() })
    }
}

/// Starts the metrics ingest listener; answers its handle and address.
fn start_ingest(settings: &Settings, metrics: Addr<MetricsActor>) -> anyhow::Result<(ServerHandle, SocketAddr)> {
    let (host, port) = (settings.metrics.ingest_host.trim_matches(['[', ']']), settings.metrics.ingest_port);
    let listener = TcpListener::bind((host, port)).with_context(|| format!("cannot bind the metrics ingest listener {host}:{port}"))?;
    let bound = listener.local_addr()?;
    let body_timeout = std::time::Duration::from_secs(settings.metrics.ingest_body_timeout_seconds);
    let state = web::Data::new(IngestState::new(metrics, settings.metrics.ingest_max_bodies, body_timeout));
    let server = HttpServer::new(move || {
        App::new()
            .wrap(TracingLogger::<RequestSpans>::new())
            .app_data(state.clone())
            .route("/ingest/{run_id}", web::post().to(ingest::ingest))
    })
    .workers(1)
    .client_request_timeout(body_timeout)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    let reached = if bound.ip().is_loopback() {
        "local relays reach it through a forward on their run network's gateway, EC2 relays through their node's SSH connection"
    } else {
        "on every address it was bound to"
    };
    tracing::info!(address = %bound, "metrics ingest listening; {reached}");
    Ok((handle, bound))
}

/// A built, bound, not yet running broker.
pub struct Application {
    port: u16,
    server: Server,
    ingest: ServerHandle,
    ingest_port: u16,
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
        // Bound before anything starts, so a taken port fails cleanly with nothing to undo.
        let host = settings.server_host();
        let listener = TcpListener::bind((host, settings.server.port))
            .with_context(|| format!("cannot bind {}:{}", settings.server.host, settings.server.port))?;
        let address = listener.local_addr()?;
        let actors = Actors::start(settings).await?;
        let ingest = actors.ingest.clone();
        let state = web::Data::new(ApiState {
            catalog: actors.catalog,
            broker: actors.broker,
            pool: actors.pool,
            metrics: actors.metrics,
            max_body_bytes: settings.server.max_body_bytes,
        });
        let expose = |list: &[crate::config::Secret]| list.iter().map(|t| t.expose().to_string()).collect();
        let tokens = web::Data::new(Tokens { operate: expose(&settings.auth.tokens), read: expose(&settings.auth.read_tokens) });
        let browser = web::Data::new(BrowserPolicy::new(
            &settings.server.allowed_hosts,
            &settings.server.allowed_origins,
            settings.binds_loopback_only(),
        ));

        let server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(api::auth::require_token))
                .wrap(middleware::from_fn(api::browser::guard))
                .wrap(middleware::from_fn(telemetry::request_id_header))
                .wrap(TracingLogger::<RequestSpans>::new())
                .app_data(state.clone())
                .app_data(tokens.clone())
                .app_data(browser.clone())
                .configure(api::configure)
        })
        .listen(listener)?
        .run();

        if settings.auth_enabled() {
            tracing::info!(%address, "loads listening; API tokens required");
        } else {
            tracing::warn!(%address, "loads listening without authentication (loopback only): set auth.tokens to require tokens");
        }
        Ok(Self { port: address.port(), server, ingest, ingest_port: actors.ingest_port })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The metrics ingest listener's port.
    pub fn ingest_port(&self) -> u16 {
        self.ingest_port
    }

    /// Handles that stop the API server and the ingest listener.
    pub fn handles(&self) -> [ServerHandle; 2] {
        [self.server.handle(), self.ingest.clone()]
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
