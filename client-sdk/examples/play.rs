//! Plays a title through the SDK against a running Loaves stack and prints
//! what happens: the player URL (point any HLS player at it), events as they
//! come, and the stats at the end. With `--simulate RENDITION` a built-in
//! player reads the endpoint instead of an external one.
//!
//! ```text
//! cargo run -p client-sdk --example play -- \
//!     --license https://127.0.0.1:50051 --license-ca tls.pem \
//!     --license-key license.pub --clearkey http://127.0.0.1:8081/clearkey \
//!     --manifest-key origin.pub --cdn http://127.0.0.1:8080/ \
//!     --tracker 127.0.0.1:7000 --entitlement viewer.ent \
//!     --title sample --simulate video_360p
//! ```
//!
//! Flags: `--no-p2p`, `--upload-kbps N` (0: off), `--speed X` (compressed
//! playback for demos).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use loaves_client_sdk::license::LicenseServerConfig;
use loaves_client_sdk::{Event, Loaves, Options, Upload, player};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut flags = Vec::new();
    let mut it = std::env::args().skip(1).peekable();
    while let Some(arg) = it.next() {
        let Some(name) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument {arg}").into());
        };
        match it.peek() {
            Some(value) if !value.starts_with("--") => {
                args.insert(name.to_owned(), it.next().unwrap_or_default());
            }
            _ => flags.push(name.to_owned()),
        }
    }
    let arg = |name: &str| {
        args.get(name)
            .cloned()
            .ok_or_else(|| format!("missing --{name}"))
    };
    let read_key = |name: &str| -> Result<_, Box<dyn std::error::Error>> {
        Ok(loaves_proto::keygen::read_public_key(Path::new(&arg(
            name,
        )?))?)
    };
    let upload = match args.get("upload-kbps").map(|v| v.parse::<u64>()) {
        Some(Ok(0)) => Upload::Off,
        Some(Ok(kbps)) => Upload::Capped {
            bytes_per_second: kbps * 125,
        },
        Some(Err(e)) => return Err(e.into()),
        None => Options::default().upload,
    };
    let mut options = Options {
        license: LicenseServerConfig {
            url: arg("license")?,
            ca_pem: args
                .get("license-ca")
                .map(std::fs::read_to_string)
                .transpose()?,
            tls_server_name: Some("localhost".into()),
            trusted_keys: [read_key("license-key")?].into_iter().collect(),
            request_timeout: Duration::from_secs(10),
        },
        clearkey_url: args.get("clearkey").cloned(),
        manifest_keys: [read_key("manifest-key")?].into_iter().collect(),
        tracker: args.get("tracker").map(|a| a.parse()).transpose()?,
        p2p: !flags.iter().any(|f| f == "no-p2p"),
        upload,
        playback_speed: args
            .get("speed")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(1.0),
        ..Options::default()
    };
    options.cdn.base_urls = vec![arg("cdn")?];
    let entitlement = std::fs::read(arg("entitlement")?)?;
    let title = arg("title")?;
    let simulate = args.get("simulate").cloned();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let loaves = Loaves::builder().options(options).build()?;
        let session = loaves.open(&title, entitlement).await?;
        println!("player URL: {}", session.player_url());
        println!("DASH URL:   {}", session.dash_url());
        let mut events = session.events();
        let printer = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::SegmentDelivered {
                        rendition,
                        sequence,
                        source,
                        bytes,
                        elapsed,
                    } => {
                        println!("{rendition}/{sequence}: {bytes} B from {source:?} in {elapsed:?}")
                    }
                    other => println!("{other:?}"),
                }
            }
        });
        match simulate {
            Some(rendition) => {
                let report = player::play(&session, &rendition, Duration::from_secs(16)).await?;
                println!(
                    "played {} objects, startup {:?}, {} stalls",
                    report.sha256.len(),
                    report.startup,
                    report.rebuffers
                );
            }
            None => {
                println!("press Ctrl-C to stop");
                tokio::signal::ctrl_c().await?;
            }
        }
        println!("{:#?}", session.stats());
        session.close().await?;
        printer.abort();
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
