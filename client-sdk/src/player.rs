//! A simulated player for tests and demos: reads the session's local player
//! endpoint over HTTP like a stock player (init, then segments in order,
//! keeping a buffer target ahead of the playhead), plays in (compressed)
//! wall time, and reports its playhead, startup and stalls to the session
//! through the same hooks an app wires to its real player.

use std::time::{Duration, Instant};

use loaves_proto::manifest::sha256;

use crate::session::{Error, Session};

/// What a simulated playback saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaybackReport {
    /// Rendition played.
    pub rendition: String,
    /// SHA-256 of the init segment and of every media segment received, in
    /// order (index 0 is the init segment).
    pub sha256: Vec<[u8; 32]>,
    /// Bytes received from the endpoint.
    pub bytes: u64,
    /// From the first request to the first media segment.
    pub startup: Duration,
    /// Stalls after startup.
    pub rebuffers: u32,
    /// Their total length.
    pub rebuffer_time: Duration,
}

/// Plays `rendition` of `session` to the end through its player endpoint.
/// `buffer_ahead` is how much media (at the session's playback speed) the
/// player keeps requested ahead of its playhead.
pub async fn play(
    session: &Session,
    rendition: &str,
    buffer_ahead: Duration,
) -> Result<PlaybackReport, Error> {
    let speed = session.playback_speed();
    let count = session
        .segment_count(rendition)
        .ok_or_else(|| Error::Presentation(format!("no rendition {rendition}")))?;
    let durations: Vec<Duration> = session
        .segment_durations(rendition)
        .into_iter()
        .map(|d| d.div_f64(speed))
        .collect();
    let ahead = buffer_ahead.div_f64(speed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .map_err(|e| Error::Setup(e.to_string()))?;
    let base = format!("http://{}/{rendition}", session.player_addr());
    let get = |url: String| {
        let http = http.clone();
        async move {
            let response = http
                .get(&url)
                .send()
                .await
                .map_err(|e| Error::Presentation(format!("{url}: {e}")))?;
            if !response.status().is_success() {
                return Err(Error::Presentation(format!(
                    "{url}: HTTP {}",
                    response.status()
                )));
            }
            response
                .bytes()
                .await
                .map_err(|e| Error::Presentation(format!("{url}: {e}")))
        }
    };
    let begin = Instant::now();
    let init = get(format!("{base}/init.mp4")).await?;
    let mut report = PlaybackReport {
        rendition: rendition.to_owned(),
        sha256: vec![sha256(&init)],
        bytes: init.len() as u64,
        startup: Duration::ZERO,
        rebuffers: 0,
        rebuffer_time: Duration::ZERO,
    };
    // Wall-time playback model.
    let mut started = false;
    let mut played = Duration::ZERO;
    let mut buffered = Duration::ZERO;
    let mut stalled_since: Option<Instant> = None;
    let mut last = Instant::now();
    let report_playhead = |played: Duration, playing: bool| {
        let mut at = Duration::ZERO;
        let mut sequence = 0u64;
        for d in &durations {
            if at + *d > played {
                break;
            }
            at += *d;
            sequence += 1;
        }
        let offset = (played.saturating_sub(at)).mul_f64(speed);
        session.set_playhead(rendition, sequence, offset, playing);
    };
    for sequence in 0..count as u64 {
        let request = get(format!("{base}/{}", crate::track::segment_file(sequence)));
        tokio::pin!(request);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let bytes = loop {
            tokio::select! {
                result = &mut request => break result?,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            if started && stalled_since.is_none() {
                played = (played + (now - last)).min(buffered);
                if played >= buffered {
                    stalled_since = Some(now);
                    report.rebuffers += 1;
                    session.player_rebuffer_start();
                }
            }
            last = now;
            if started {
                report_playhead(played, stalled_since.is_none());
            }
        };
        let now = Instant::now();
        if started && stalled_since.is_none() {
            played = (played + (now - last)).min(buffered);
        }
        last = now;
        report.sha256.push(sha256(&bytes));
        report.bytes += bytes.len() as u64;
        buffered += durations
            .get(sequence as usize)
            .copied()
            .unwrap_or_default();
        if !started {
            started = true;
            report.startup = begin.elapsed();
            session.player_started();
        }
        if let Some(since) = stalled_since.take() {
            let stall = now - since;
            report.rebuffer_time += stall;
            session.player_rebuffer_end(stall);
        }
        // Keep at most `ahead` buffered: wait for the playhead to advance.
        while buffered.saturating_sub(played) > ahead {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = Instant::now();
            played = (played + (now - last)).min(buffered);
            last = now;
            report_playhead(played, true);
        }
        report_playhead(played, true);
    }
    Ok(report)
}
