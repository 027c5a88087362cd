//! `loaves-viewer`: one viewer, headless. Joins a title against a running
//! Loaves stack through the client SDK, plays a rendition with the SDK's
//! simulated player (it reads the local endpoint as a stock player would),
//! prints progress while it plays, and its final stats as one JSON object
//! on standard output. The network lab runs every viewer as one process of
//! this binary, each in its own network namespace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use loaves_client_sdk::player::{self, PlaybackReport};
use loaves_client_sdk::{Event, Keyring, Loaves, NatType, RenditionName, Session, Stats, Upload};
use serde_json::json;

/// Watch a title as one headless viewer, and report what it took.
///
/// Progress goes to standard error; the final report (stats, playback,
/// addresses) is one JSON object on standard output. Exit status 0 when the
/// playback completed, 1 otherwise.
#[derive(Debug, Parser)]
#[command(name = "loaves-viewer", version, about, long_about)]
struct Args {
    /// The license server's gRPC URL (https://host:port).
    #[arg(long)]
    license: String,
    /// PEM certificate trusted for the license server's TLS (its CA, or its
    /// own certificate when self-signed without the CA flag).
    #[arg(long)]
    license_ca: Option<PathBuf>,
    /// Name the license server's certificate is issued to, when not the
    /// URL's host.
    #[arg(long)]
    license_tls_name: Option<String>,
    /// The license server's public key(s) (SPKI PEM), repeatable.
    #[arg(long = "license-key", required = true)]
    license_keys: Vec<PathBuf>,
    /// The license server's ClearKey endpoint (for players; unused by the
    /// simulated one, kept for a real player pointed at the endpoint).
    #[arg(long)]
    clearkey: Option<String>,
    /// The origin's manifest key(s) (SPKI PEM), repeatable.
    #[arg(long = "manifest-key", required = true)]
    manifest_keys: Vec<PathBuf>,
    /// CDN base URL(s) in order of preference, repeatable.
    #[arg(long = "cdn", required = true)]
    cdn: Vec<String>,
    /// Tracker shard name(s) (host:port), repeatable, in the order every
    /// component lists them.
    #[arg(long = "tracker")]
    trackers: Vec<String>,
    /// The entitlement file (as the sign-in system issued it).
    #[arg(long)]
    entitlement: PathBuf,
    /// The title to watch.
    #[arg(long)]
    title: String,
    /// The rendition to play (default: the first one, by name).
    #[arg(long)]
    rendition: Option<String>,
    /// Live: start this many segments behind the live edge.
    #[arg(long, default_value_t = 3)]
    latency_segments: u64,
    /// Stop after this much media played (live; VOD plays to the end).
    #[arg(long)]
    watch_seconds: Option<u64>,
    /// P2P off: everything from the CDN (the baseline).
    #[arg(long)]
    no_p2p: bool,
    /// Upload cap, kilobits per second (0: no upload).
    #[arg(long)]
    upload_kbps: Option<u64>,
    /// Region and ISP hints.
    #[arg(long, default_value = "")]
    region: String,
    /// See --region.
    #[arg(long, default_value = "")]
    isp: String,
    /// Local address of the peer endpoint.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// A public address of this viewer to advertise first (a forwarded
    /// port), repeatable.
    #[arg(long = "public-address")]
    public_addresses: Vec<SocketAddr>,
    /// Media time per wall time (demos compress playback).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// How far ahead the simulated player keeps segments requested, seconds.
    #[arg(long, default_value_t = 16)]
    buffer_seconds: u64,
    /// Print every session event to standard error.
    #[arg(long)]
    events: bool,
}

fn keyring(paths: &[PathBuf]) -> anyhow::Result<Keyring> {
    let mut ring = Keyring::default();
    for path in paths {
        ring.insert(
            loaves_proto::keygen::read_public_key(path)
                .with_context(|| format!("reading the key {}", path.display()))?,
        );
    }
    Ok(ring)
}

fn builder(args: &Args) -> anyhow::Result<loaves_client_sdk::LoavesBuilder> {
    let mut builder = Loaves::builder()
        .license_server(&args.license, keyring(&args.license_keys)?)
        .manifest_keys(keyring(&args.manifest_keys)?)
        .cdn_urls(&args.cdn)
        .trackers(args.trackers.iter().cloned())
        .p2p(!args.no_p2p)
        .location(args.region.clone(), args.isp.clone())
        .public_addresses(args.public_addresses.iter().copied())
        .playback_speed(args.speed);
    if let Some(path) = &args.license_ca {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        builder = builder.license_server_ca_pem(pem);
    }
    if let Some(name) = &args.license_tls_name {
        builder = builder.license_server_tls_name(name.clone());
    }
    if let Some(url) = &args.clearkey {
        builder = builder.clearkey_url(url);
    }
    if let Some(bind) = args.bind {
        builder = builder.peer_bind(bind);
    }
    match args.upload_kbps {
        Some(0) => builder = builder.upload(Upload::Off),
        Some(kbps) => {
            builder = builder.upload(Upload::Capped {
                bytes_per_second: kbps.saturating_mul(125),
            })
        }
        None => {}
    }
    Ok(builder)
}

fn stats_json(stats: &Stats) -> serde_json::Value {
    json!({
        "bytes_from_peers": stats.bytes_from_peers,
        "bytes_from_seeds": stats.bytes_from_seeds,
        "bytes_from_cdn": stats.bytes_from_cdn,
        "bytes_cross_isp": stats.bytes_cross_isp,
        "bytes_cross_region": stats.bytes_cross_region,
        "bytes_uploaded": stats.bytes_uploaded,
        "uploads_refused_busy": stats.uploads_refused_busy,
        "offload_ratio": stats.offload_ratio,
        "segments_delivered": stats.segments_delivered,
        "segments_rejected": stats.segments_rejected,
        "peers_banned": stats.peers_banned,
        "peer_connect_attempts": stats.peer_connect_attempts,
        "peer_connects": stats.peer_connects,
        "peer_connect_failures": stats.peer_connect_failures,
        "peers_connected": stats.peers_connected,
        "peer_connects_punched": stats.peer_connects_punched,
        "punch_requests": stats.punch_requests,
        "punch_notices": stats.punch_notices,
        "nat": nat_name(stats.nat),
        "seeds_connected": stats.seeds_connected,
        "license_renewals": stats.license_renewals,
        "rebuffer_s": stats.rebuffer_time.as_secs_f64(),
        "rebuffer_count": stats.rebuffer_count,
        "played_s": stats.played_time.as_secs_f64(),
        "startup_s": stats.startup_time.map(|s| s.as_secs_f64()),
    })
}

/// The NAT class as the tracker's metrics name it.
fn nat_name(nat: NatType) -> &'static str {
    match nat {
        NatType::Open => "open",
        NatType::EndpointIndependent => "ei",
        NatType::EndpointDependent => "ed",
        _ => "unknown",
    }
}

/// Connection outcomes kept for the report (the first ones: a viewer makes
/// a few per peer it is told of).
const CONNECTIONS_KEPT: usize = 512;

fn playback_json(report: &PlaybackReport) -> serde_json::Value {
    json!({
        "rendition": report.rendition.as_str(),
        "first_sequence": report.first_sequence,
        "objects": report.sha256.len(),
        "bytes": report.bytes,
        "startup_s": report.startup.as_secs_f64(),
        "rebuffers": report.rebuffers,
        "rebuffer_s": report.rebuffer_time.as_secs_f64(),
    })
}

/// Prints a progress line every few seconds until cancelled.
async fn progress(session: &Session, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = session.stats();
        eprintln!(
            "[{:>5.1}s] peers {} B, seeds {} B, CDN {} B, offload {:.2}, uploaded {} B, stalls {}",
            started.elapsed().as_secs_f64(),
            s.bytes_from_peers,
            s.bytes_from_seeds,
            s.bytes_from_cdn,
            s.offload_ratio,
            s.bytes_uploaded,
            s.rebuffer_count
        );
    }
}

async fn watch(args: Args) -> anyhow::Result<bool> {
    let loaves = builder(&args)?.build()?;
    let entitlement = std::fs::read(&args.entitlement)
        .with_context(|| format!("reading {}", args.entitlement.display()))?;
    let started = Instant::now();
    let session = loaves.open(&args.title, entitlement).await?;
    eprintln!("player URL: {}", session.player_url());
    let rendition = match &args.rendition {
        Some(name) => RenditionName::new(name.as_str())?,
        None => match session.renditions().into_iter().next() {
            Some(first) => first,
            None => bail!("the title has no rendition"),
        },
    };
    let mut events = session.events();
    let print_events = args.events;
    let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = connections.clone();
    let printer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::PeerConnect {
                peer,
                seed,
                tried,
                address,
                punched,
                elapsed,
                ..
            } = &event
            {
                let mut list = kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if list.len() < CONNECTIONS_KEPT {
                    list.push(json!({
                        "peer": peer,
                        "seed": seed,
                        "tried": tried.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "address": address.map(|a| a.to_string()),
                        "punched": punched,
                        "elapsed_s": elapsed.as_secs_f64(),
                    }));
                }
            }
            match event {
                Event::Addresses { candidates } => eprintln!("addresses: {candidates:?}"),
                Event::Unreachable { reason } => eprintln!("warning: unreachable: {reason}"),
                Event::SessionEnded { reason } => eprintln!("session ended: {reason}"),
                other if print_events => eprintln!("{other:?}"),
                _ => {}
            }
        }
    });
    let play = async {
        if session.is_live(&rendition) {
            let watch = args
                .watch_seconds
                .map_or(Duration::MAX, Duration::from_secs);
            player::play_live(&session, &rendition, args.latency_segments, watch).await
        } else {
            player::play(
                &session,
                &rendition,
                Duration::from_secs(args.buffer_seconds),
            )
            .await
        }
    };
    let played = tokio::select! {
        played = play => Some(played),
        () = progress(&session, started) => None,
        _ = tokio::signal::ctrl_c() => None,
    };
    let stats = session.stats();
    let candidates: Vec<String> = session
        .peer_candidates()
        .iter()
        .map(ToString::to_string)
        .collect();
    session.close().await?;
    printer.abort();
    let (ok, playback, error) = match &played {
        Some(Ok(report)) => (true, playback_json(report), None),
        Some(Err(e)) => (false, serde_json::Value::Null, Some(e.to_string())),
        None => (
            false,
            serde_json::Value::Null,
            Some("interrupted".to_owned()),
        ),
    };
    let connections: Vec<serde_json::Value> = std::mem::take(
        &mut *connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let report = json!({
        "title": args.title,
        "ok": ok,
        "error": error,
        "wall_s": started.elapsed().as_secs_f64(),
        "candidates": candidates,
        "stats": stats_json(&stats),
        // Every connection to a peer or seed that completed or was given
        // up (Event::PeerConnect), the first ones.
        "connections": connections,
        "playback": playback,
    });
    println!("{report}");
    Ok(ok)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let ok = runtime.block_on(watch(args))?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
