//! `edge-seed`: the Loaves origin. `edge-seed package` protects and signs a
//! CMAF presentation; `edge-seed serve` runs the seed; `edge-seed credential`
//! mints a seed's signed credential.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use edge_seed::keysource::{GrpcKeySource, KeySource, LocalKeySource};
use edge_seed::{PackageOptions, Progress, package};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loaves_proto::manifest::Scheme;

#[derive(Debug, Parser)]
#[command(
    name = "edge-seed",
    version,
    about = "Loaves origin: CENC packager for CMAF presentations, and the edge seed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Protect a clear CMAF presentation with Common Encryption, sign its
    /// manifests and write HLS and DASH.
    ///
    /// INPUT is an HLS multivariant or media playlist whose media is
    /// fragmented MP4 (EXT-X-MAP), a static DASH MPD addressing separate
    /// init and media files (SegmentTemplate or SegmentList), or a
    /// directory holding one subdirectory per rendition with `init.mp4` and
    /// numbered segments.
    Package(PackageArgs),
    /// Package a live event: watch INPUT (one subdirectory per rendition,
    /// where an encoder writes `init.mp4` and numbered CMAF segments),
    /// protect each new segment, append it to the signed manifest and slide
    /// the HLS playlists. Out-of-order and duplicate segments are refused.
    /// Create a file named END in INPUT to close the event.
    Live(LiveArgs),
    /// Write synthetic CMAF (valid boxes, random payload) of any bitrate
    /// and duration, as a directory of renditions, for load tests.
    Synth(SynthArgs),
    /// Run the edge seed: QUIC peer wire server and HTTP origin for the
    /// packaged titles, with verified origin pulls, caches, live prefetch and
    /// tracker registration (see `edge_seed::serve`).
    ///
    /// Configuration: built-in defaults, then the TOML file (--config), then
    /// LOAVES_SEED_<FIELD> / LOAVES_SEED_<SECTION>__<FIELD> environment
    /// variables (e.g. LOAVES_SEED_TRACKER__ADDRESSES; the older
    /// LOAVES_SEED_TRACKERS still works), then these flags. `edge-seed serve
    /// print-config` shows the result, `print-config --commented` every
    /// setting.
    Serve(edge_seed::serve::cli::ServeArgs),
    /// Mint the signed seed credential an edge seed presents to trackers
    /// and viewers (operators' tool; signed with the license server's key).
    Credential(edge_seed::serve::cli::CredentialArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemeArg {
    /// AES-128-CTR, subsample encryption for video.
    Cenc,
    /// AES-128-CBC, 1:9 pattern for video, constant IV.
    Cbcs,
    /// Already protected input: copied byte for byte, only signed.
    Passthrough,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeySourceArg {
    /// The license server's KeyService over gRPC (production).
    Grpc,
    /// Keys derived from --dev-key-secret (development and tests only).
    Local,
}

#[derive(Debug, clap::Args)]
struct PackageArgs {
    /// Input presentation (HLS playlist, DASH MPD or directory).
    input: PathBuf,
    /// Output directory (published atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Title id used in manifests and key requests.
    #[arg(short, long)]
    title: String,
    /// Protection scheme.
    #[arg(long, value_enum, default_value = "cenc")]
    scheme: SchemeArg,
    /// Origin manifest signing key (PKCS#8 PEM, as written by loaves-keygen).
    #[arg(long, env = "LOAVES_ORIGIN_KEY")]
    origin_key: PathBuf,
    /// Where content keys come from.
    #[arg(long, value_enum, default_value = "grpc")]
    key_source: KeySourceArg,
    /// License server KeyService endpoint.
    #[arg(
        long,
        env = "LOAVES_KEY_SERVICE",
        default_value = "https://127.0.0.1:7443"
    )]
    key_service: String,
    /// Admin bearer token for the KeyService (prefer the environment or
    /// --admin-token-file: a flag shows in `ps`).
    #[arg(long, env = "LOAVES_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin bearer token (its trimmed content), readable
    /// by its owner only. --admin-token / LOAVES_ADMIN_TOKEN wins over it.
    #[arg(long, env = "LOAVES_ADMIN_TOKEN_FILE", value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// PEM certificate the key service's TLS certificate must chain to:
    /// the CA that signed it, or the server's own certificate if that is
    /// self-signed without the CA flag (like the license server's generated
    /// development certificate, tls.dev_cert_out). A self-signed
    /// certificate with the CA flag set cannot serve as the server's own:
    /// TLS refuses it (CaUsedAsEndEntity).
    #[arg(long, env = "LOAVES_KEY_SERVICE_CA", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Secret of the local development key source.
    #[arg(
        long,
        env = "LOAVES_DEV_KEY_SECRET",
        default_value = "loaves-dev",
        hide_env_values = true
    )]
    dev_key_secret: String,
    /// New key period every N segments (0: one key period for the title).
    #[arg(long, default_value_t = 0)]
    key_period_segments: u32,
    /// Video at least this tall uses the `hd` key, below it the `sd` key.
    #[arg(long, default_value_t = 720)]
    hd_min_height: u16,
    /// ClearKey license URL written in HLS and DASH.
    #[arg(long, default_value = "/clearkey/license")]
    clearkey_license_url: String,
    /// Replace the output directory if it exists.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct LiveArgs {
    #[command(flatten)]
    package: PackageArgs,
    /// Segments kept in the live media playlists.
    #[arg(long, default_value_t = 6)]
    window: usize,
    /// How often INPUT is scanned, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
}

#[derive(Debug, clap::Args)]
struct SynthArgs {
    /// Output directory (one subdirectory per rendition).
    output: PathBuf,
    /// Total duration in seconds.
    #[arg(long, default_value_t = 60)]
    duration_s: u32,
    /// Segment duration in milliseconds.
    #[arg(long, default_value_t = 2000)]
    segment_ms: u32,
    /// Video renditions as WIDTHxHEIGHT:BITS_PER_SECOND (repeatable).
    #[arg(long, default_values_t = ["640x360:800000".to_owned(), "1280x720:3000000".to_owned()])]
    video: Vec<String>,
    /// Video frame rate.
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Audio bitrate (0: no audio rendition).
    #[arg(long, default_value_t = 128_000)]
    audio_bitrate: u64,
    /// Seed of the random payload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Package(args) => run_package(args),
        Command::Live(args) => run_live(args),
        Command::Synth(args) => run_synth(args),
        Command::Serve(args) => Ok(edge_seed::serve::cli::run(args)?),
        Command::Credential(args) => Ok(edge_seed::serve::cli::run_credential(&args)?),
    }
}

fn run_package(args: PackageArgs) -> Result<()> {
    let (origin_key, keys, options) = setup(&args)?;
    eprintln!("keys: {}", keys.describe());
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} segments {binary_bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut bytes = 0u64;
    let summary = package(
        &args.input,
        &args.output,
        &options,
        keys.as_ref(),
        &origin_key,
        &mut |p| match p {
            Progress::Total(n) => bar.set_length(n),
            Progress::Segment { bytes: b } => {
                bytes += b;
                bar.inc(1);
            }
        },
    );
    bar.finish_and_clear();
    let summary = summary?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "packaged {} renditions, {} segments, {:.1} MB in {:.2} s ({:.1} MB/s) with {} into {}",
        summary.renditions.len(),
        summary.segments(),
        summary.bytes_in() as f64 / 1e6,
        elapsed,
        bytes as f64 / 1e6 / elapsed.max(1e-9),
        summary.scheme.as_str(),
        summary.output.display()
    );
    for r in &summary.renditions {
        let kids: Vec<String> = r
            .kids
            .iter()
            .map(|(p, k)| format!("{p}:{}", hex::encode(k)))
            .collect();
        println!(
            "  {:<14} {:<5} {:<12} {:>3} segments {:>8} kbit/s  kids [{}]",
            r.name,
            r.track_type,
            r.codec_string,
            r.segments.len(),
            r.average_bandwidth / 1000,
            kids.join(" ")
        );
    }
    Ok(())
}

/// The origin key, key source and options of a packaging command.
fn setup(
    args: &PackageArgs,
) -> Result<(
    loaves_proto::keys::SigningKeyPair,
    Box<dyn KeySource>,
    PackageOptions,
)> {
    let origin_key = loaves_proto::keygen::read_signing_key(&args.origin_key)
        .context("reading the origin signing key")?;
    let scheme = match args.scheme {
        SchemeArg::Cenc => Scheme::Cenc,
        SchemeArg::Cbcs => Scheme::Cbcs,
        SchemeArg::Passthrough => Scheme::Passthrough,
    };
    let keys: Box<dyn KeySource> = match args.key_source {
        KeySourceArg::Local => Box::new(LocalKeySource::new(args.dev_key_secret.as_bytes())),
        KeySourceArg::Grpc => {
            let ca = match &args.ca_cert {
                Some(path) => Some(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            if args.key_service.starts_with("https://") && ca.is_none() {
                bail!(
                    "--ca-cert is required for an https key service: the CA that signed its \
                     certificate, or its own self-signed certificate without the CA flag"
                );
            }
            let token = loaves_service::secret::secret(
                "LOAVES_ADMIN_TOKEN",
                args.admin_token.as_deref(),
                args.admin_token_file.as_deref(),
            )?
            .map(|(token, _source)| token.as_str().to_owned());
            Box::new(GrpcKeySource::new(args.key_service.clone(), token, ca))
        }
    };
    let options = PackageOptions {
        title: args.title.clone(),
        scheme,
        key_period_segments: args.key_period_segments,
        hd_min_height: args.hd_min_height,
        clearkey_license_url: args.clearkey_license_url.clone(),
        force: args.force,
    };
    Ok((origin_key, keys, options))
}

fn run_live(args: LiveArgs) -> Result<()> {
    let (origin_key, keys, options) = setup(&args.package)?;
    eprintln!("keys: {}", keys.describe());
    let input = &args.package.input;
    let mut live = edge_seed::live::LivePackager::new(
        input,
        &args.package.output,
        options,
        args.window,
        keys.as_ref(),
        &origin_key,
    )?;
    let mut packaged = 0u64;
    loop {
        let end = input.join("END").exists();
        for event in live.poll(loaves_proto::UnixSeconds::now())? {
            match event {
                edge_seed::live::LiveEvent::Started { rendition } => {
                    eprintln!("started {rendition}")
                }
                edge_seed::live::LiveEvent::Packaged {
                    rendition,
                    sequence,
                } => {
                    packaged += 1;
                    if !args.package.quiet {
                        eprintln!("packaged {rendition} #{sequence}");
                    }
                }
                edge_seed::live::LiveEvent::Refused { path, reason } => {
                    eprintln!("refused {}: {reason}", path.display());
                }
            }
        }
        if end {
            live.finish(loaves_proto::UnixSeconds::now())?;
            println!(
                "live event ended: {packaged} segments packaged into {}",
                args.package.output.display()
            );
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(args.poll_ms));
    }
}

fn run_synth(args: SynthArgs) -> Result<()> {
    use edge_seed::synthetic::{SyntheticTrack, init_segment, media_segment};
    let mut tracks = Vec::new();
    for spec in &args.video {
        let parse = || -> Option<(u16, u16, u64)> {
            let (dims, bitrate) = spec.split_once(':')?;
            let (w, h) = dims.split_once('x')?;
            Some((w.parse().ok()?, h.parse().ok()?, bitrate.parse().ok()?))
        };
        let (w, h, bitrate) =
            parse().with_context(|| format!("--video {spec}: expected WIDTHxHEIGHT:BITRATE"))?;
        tracks.push((
            format!("video_{h}p"),
            SyntheticTrack {
                video: Some((w, h)),
                fps: args.fps,
                bitrate,
            },
        ));
    }
    if args.audio_bitrate > 0 {
        tracks.push((
            "audio".to_owned(),
            SyntheticTrack {
                video: None,
                fps: 0,
                bitrate: args.audio_bitrate,
            },
        ));
    }
    if args.segment_ms == 0 {
        bail!("--segment-ms must be positive");
    }
    let count = (u64::from(args.duration_s) * 1000).div_ceil(u64::from(args.segment_ms));
    let mut bytes = 0u64;
    for (name, track) in &tracks {
        let dir = args.output.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let init = init_segment(track);
        std::fs::write(dir.join("init.mp4"), &init)
            .with_context(|| format!("writing {}", dir.display()))?;
        for seq in 0..count {
            let seg = media_segment(track, seq, args.segment_ms, args.seed);
            bytes += seg.len() as u64;
            let path = dir.join(format!("seg_{seq:05}.m4s"));
            std::fs::write(&path, &seg).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    println!(
        "wrote {} renditions x {count} segments ({:.1} MB) into {}",
        tracks.len(),
        bytes as f64 / 1e6,
        args.output.display()
    );
    Ok(())
}
