//! HTTP side: `/metrics` (Prometheus text), `/healthz`, `/dashboard` (one
//! self-contained page, no build step, no external scripts) and
//! `/api/dashboard` (the JSON it polls).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Redirect};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;

use crate::server::Shared;
use crate::stats::{ConnectRow, Counters, Sample};
use crate::swarm::SwarmSize;

/// The dashboard page, embedded at build time.
pub const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// Most groups (titles, ISPs, swarms) listed in the dashboard JSON.
pub const DASHBOARD_TOP: usize = 12;

/// One group in the dashboard JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Group name (title, ISP or region).
    pub name: String,
    /// Its counters.
    #[serde(flatten)]
    pub counters: Counters,
}

/// The JSON the dashboard polls.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    /// Server time, Unix seconds.
    pub now: u64,
    /// Totals since start.
    pub totals: Counters,
    /// Cumulative totals over time (the page derives rates).
    pub history: Vec<Sample>,
    /// Largest titles by bytes downloaded.
    pub by_title: Vec<Group>,
    /// Largest ISPs by bytes downloaded.
    pub by_isp: Vec<Group>,
    /// Largest regions by bytes downloaded.
    pub by_region: Vec<Group>,
    /// Largest swarms.
    pub swarms: Vec<SwarmSize>,
    /// Viewers tracked.
    pub peers: usize,
    /// Swarms tracked.
    pub swarm_count: usize,
    /// Seeds tracked.
    pub seeds: usize,
    /// Viewers' connection attempts by NAT pair (why a swarm has no P2P).
    pub connects: Vec<ConnectRow>,
}

/// Builds the dashboard JSON from the shared state.
pub fn dashboard(shared: &Shared, now: u64) -> Dashboard {
    let (sizes, peers, swarm_count, seeds) = shared.with_book(|book| {
        (
            book.swarm_sizes(),
            book.total_peers(),
            book.swarm_count(),
            book.seed_count(),
        )
    });
    shared.with_stats(|stats| {
        let group = |key: fn(&crate::stats::Labels) -> &str| -> Vec<Group> {
            stats
                .group_by(key)
                .into_iter()
                .take(DASHBOARD_TOP)
                .map(|(name, counters)| Group { name, counters })
                .collect()
        };
        Dashboard {
            now,
            totals: *stats.totals(),
            history: stats.history().copied().collect(),
            by_title: group(|l| &l.title),
            by_isp: group(|l| &l.isp),
            by_region: group(|l| &l.region),
            swarms: sizes.into_iter().take(DASHBOARD_TOP).collect(),
            peers,
            swarm_count,
            seeds,
            connects: stats.connects().rows(),
        }
    })
}

/// The HTTP routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(|| async { Html(DASHBOARD_HTML) }))
        .route("/api/dashboard", get(dashboard_json))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn dashboard_json(State(shared): State<Arc<Shared>>) -> Json<Dashboard> {
    Json(dashboard(&shared, loaves_proto::UnixSeconds::now().0))
}

/// Serves the routes on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
