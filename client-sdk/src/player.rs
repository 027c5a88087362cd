//! A simulated player for tests and demos: reads the session's local player
//! endpoint over HTTP like a stock player (init, then segments in order,
//! keeping a buffer target ahead of the playhead), plays in (compressed)
//! wall time, and reports its playhead, startup and stalls to the session
//! through the same hooks an app wires to its real player.
//!
//! [`play`] plays a VOD rendition to the end; [`play_live`] joins a live
//! rendition some segments behind its live edge and follows it. Both run
//! the same playback model ([`Playback`]): only the choice of the next
//! segment differs.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loaves_proto::manifest::sha256;

use loaves_proto::names::RenditionName;

use crate::error::Error;
use crate::session::Session;
use crate::session::presentation::segment_file;

/// Why a simulated playback failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlayError {
    /// The session refused (unknown rendition, closed, ...).
    #[error(transparent)]
    Session(#[from] Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A request to the player endpoint failed.
    #[error("{url}: {source}")]
    Request {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The player endpoint answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: u16,
    },
    /// A live rendition did not go on as a player needs.
    #[error("rendition {rendition}: {problem}")]
    Live {
        /// The rendition.
        rendition: RenditionName,
        /// What went wrong.
        problem: String,
    },
}

/// How often the model advances while the player waits.
const TICK: Duration = Duration::from_millis(20);
/// Bound on one HTTP request to the endpoint (the endpoint itself waits at
/// most 30 s for a segment).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// Live: the longest wait for the next segment to appear, in segment
/// durations (wall time at the playback speed), before giving up.
const LIVE_WAIT_SEGMENTS: u32 = 10;
/// Live: ... and never less than this.
const LIVE_WAIT_MIN: Duration = Duration::from_secs(10);

/// What a simulated playback saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaybackReport {
    /// Rendition played.
    pub rendition: RenditionName,
    /// SHA-256 of the init segment and of every media segment received, in
    /// order (index 0 is the init segment, index `i` segment
    /// `first_sequence + i - 1`).
    pub sha256: Vec<[u8; 32]>,
    /// Bytes received from the endpoint.
    pub bytes: u64,
    /// From the first request to the first media segment.
    pub startup: Duration,
    /// Stalls after startup.
    pub rebuffers: u32,
    /// Their total length.
    pub rebuffer_time: Duration,
    /// The first segment played (0 for VOD; live starts behind the edge).
    pub first_sequence: u64,
}

/// Plays `rendition` of `session` to the end through its player endpoint.
/// `buffer_ahead` is how much media (at the session's playback speed) the
/// player keeps requested ahead of its playhead.
pub async fn play(
    session: &Session,
    rendition: &RenditionName,
    buffer_ahead: Duration,
) -> Result<PlaybackReport, PlayError> {
    let count = session.segment_count(rendition)?;
    let durations = session.segment_durations(rendition)?;
    let ahead = buffer_ahead.div_f64(session.playback_speed());
    let mut playback = Playback::start(session, rendition, 0).await?;
    for (sequence, duration) in (0..count as u64).zip(durations) {
        playback.fetch(sequence, duration).await?;
        playback.keep_at_most(ahead).await;
    }
    Ok(playback.report)
}

/// Plays live `rendition` of `session`: starts `latency_segments` behind
/// the live edge, fetches each segment as soon as the verified manifest
/// lists it, and plays in (compressed) real time. Stops once `duration` of
/// media was played, or when the event ended and everything was played.
/// Fails if no new segment appears for a long while (ten segment durations,
/// at least 10 s).
pub async fn play_live(
    session: &Session,
    rendition: &RenditionName,
    latency_segments: u64,
    duration: Duration,
) -> Result<PlaybackReport, PlayError> {
    let range = session
        .segment_range(rendition)
        .ok_or_else(|| PlayError::Live {
            rendition: rendition.clone(),
            problem: "no segment listed yet".into(),
        })?;
    let first = range
        .end()
        .saturating_sub(latency_segments)
        .max(*range.start());
    // Saturating: `Duration::MAX` means "until the event ends".
    let limit = Duration::try_from_secs_f64(duration.as_secs_f64() / session.playback_speed())
        .unwrap_or(Duration::MAX);
    let mut playback = Playback::start(session, rendition, first).await?;
    let mut sequence = first;
    while playback.buffered < limit {
        let listed = playback
            .wait(next_listed(session, rendition, sequence))
            .await?;
        let Some(media) = listed else {
            break; // the event ended and every segment was fetched
        };
        playback.fetch(sequence, media).await?;
        sequence += 1;
    }
    // Play out what is buffered, up to the limit.
    let until = playback.buffered.min(limit);
    playback.play_until(until).await;
    Ok(playback.report)
}

/// Waits until `sequence` is listed in the live manifest (its media
/// duration), or returns `None` when the event ended before it.
async fn next_listed(
    session: &Session,
    rendition: &RenditionName,
    sequence: u64,
) -> Result<Option<Duration>, PlayError> {
    let speed = session.playback_speed();
    let since = Instant::now();
    loop {
        if let Some(duration) = session.segment_duration(rendition, sequence) {
            return Ok(Some(duration));
        }
        let edge = session.live_edge(rendition);
        if !session.is_live(rendition) && edge.is_none_or(|edge| edge < sequence) {
            return Ok(None);
        }
        if edge.is_some_and(|edge| edge > sequence) {
            // Listed before and forgotten since: the player fell too far
            // behind the live window.
            return Err(PlayError::Live {
                rendition: rendition.clone(),
                problem: format!("segment {sequence} left the live window"),
            });
        }
        let typical = session
            .segment_durations(rendition)?
            .into_iter()
            .max()
            .unwrap_or_default()
            .div_f64(speed);
        if since.elapsed() > (typical * LIVE_WAIT_SEGMENTS).max(LIVE_WAIT_MIN) {
            return Err(PlayError::Live {
                rendition: rendition.clone(),
                problem: format!("no segment {sequence} after {:?}", since.elapsed()),
            });
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The playback model shared by [`play`] and [`play_live`]: wall-time
/// playback of a buffer of segments, stalls when it runs dry, the playhead
/// reported to the session as it moves. All durations are wall time (media
/// time divided by the playback speed).
struct Playback<'a> {
    session: &'a Session,
    rendition: &'a RenditionName,
    speed: f64,
    http: reqwest::Client,
    base: String,
    report: PlaybackReport,
    begin: Instant,
    started: bool,
    played: Duration,
    buffered: Duration,
    stalled_since: Option<Instant>,
    last: Instant,
    /// Segments fetched and not yet played through, with their durations;
    /// the front one starts at `front_at` (bounded by the buffer).
    queue: VecDeque<(u64, Duration)>,
    front_at: Duration,
    /// The sequence after the last one fetched.
    next_sequence: u64,
}

impl<'a> Playback<'a> {
    /// Fetches the init segment; playback will start at `first_sequence`.
    async fn start(
        session: &'a Session,
        rendition: &'a RenditionName,
        first_sequence: u64,
    ) -> Result<Self, PlayError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(PlayError::Client)?;
        let base = format!("http://{}/{rendition}", session.player_addr());
        let begin = Instant::now();
        let init = get(http.clone(), format!("{base}/init.mp4")).await?;
        Ok(Self {
            session,
            rendition,
            speed: session.playback_speed(),
            http,
            base,
            report: PlaybackReport {
                rendition: rendition.clone(),
                sha256: vec![sha256(&init)],
                bytes: init.len() as u64,
                startup: Duration::ZERO,
                rebuffers: 0,
                rebuffer_time: Duration::ZERO,
                first_sequence,
            },
            begin,
            started: false,
            played: Duration::ZERO,
            buffered: Duration::ZERO,
            stalled_since: None,
            last: Instant::now(),
            queue: VecDeque::new(),
            front_at: Duration::ZERO,
            next_sequence: first_sequence,
        })
    }

    /// Moves the playhead by the wall time since the last call; with
    /// `detect_stall`, an empty buffer starts a stall.
    fn advance(&mut self, detect_stall: bool) {
        let now = Instant::now();
        if self.started && self.stalled_since.is_none() {
            self.played = (self.played + (now - self.last)).min(self.buffered);
            if detect_stall && self.played >= self.buffered {
                self.stalled_since = Some(now);
                self.report.rebuffers += 1;
                self.session.player_rebuffer_start();
            }
        }
        self.last = now;
        while let Some(&(_, d)) = self.queue.front() {
            if self.front_at + d > self.played {
                break;
            }
            self.front_at += d;
            self.queue.pop_front();
        }
    }

    /// Tells the session where the playhead is.
    fn report_playhead(&self, playing: bool) {
        let (sequence, offset) = match self.queue.front() {
            Some(&(sequence, _)) => (sequence, self.played.saturating_sub(self.front_at)),
            None => (self.next_sequence, Duration::ZERO),
        };
        // The rendition is the session's own: the report cannot be refused.
        let _ = self.session.set_playhead(
            self.rendition,
            sequence,
            offset.mul_f64(self.speed),
            playing,
        );
    }

    /// Awaits `future` while playback goes on (and may stall).
    async fn wait<T>(&mut self, future: impl Future<Output = T>) -> T {
        tokio::pin!(future);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                value = &mut future => return value,
                _ = tick.tick() => {}
            }
            self.advance(true);
            if self.started {
                self.report_playhead(self.stalled_since.is_none());
            }
        }
    }

    /// Fetches segment `sequence` (of `media` duration) from the endpoint
    /// and adds it to the buffer; the first one starts playback, one that
    /// ends a stall reports it.
    async fn fetch(&mut self, sequence: u64, media: Duration) -> Result<(), PlayError> {
        let url = format!("{}/{}", self.base, segment_file(sequence));
        let bytes = self.wait(get(self.http.clone(), url)).await?;
        self.advance(false);
        self.report.sha256.push(sha256(&bytes));
        self.report.bytes += bytes.len() as u64;
        let wall = media.div_f64(self.speed);
        self.buffered += wall;
        self.queue.push_back((sequence, wall));
        self.next_sequence = sequence + 1;
        if !self.started {
            self.started = true;
            self.report.startup = self.begin.elapsed();
            self.session.player_started();
        }
        if let Some(since) = self.stalled_since.take() {
            let stall = self.last - since;
            self.report.rebuffer_time += stall;
            self.session.player_rebuffer_end(stall);
        }
        self.report_playhead(true);
        Ok(())
    }

    /// Waits until at most `ahead` is buffered past the playhead.
    async fn keep_at_most(&mut self, ahead: Duration) {
        while self.buffered.saturating_sub(self.played) > ahead {
            tokio::time::sleep(TICK).await;
            self.advance(false);
            self.report_playhead(true);
        }
    }

    /// Plays until the playhead reaches `until` (at most what is buffered).
    async fn play_until(&mut self, until: Duration) {
        let until = until.min(self.buffered);
        self.keep_at_most(self.buffered - until).await;
    }
}

/// One GET on the endpoint: the body of a 2xx answer.
async fn get(http: reqwest::Client, url: String) -> Result<Bytes, PlayError> {
    let response = match http.get(&url).send().await {
        Ok(response) => response,
        Err(source) => return Err(PlayError::Request { url, source }),
    };
    if !response.status().is_success() {
        return Err(PlayError::Status {
            url,
            status: response.status().as_u16(),
        });
    }
    match response.bytes().await {
        Ok(bytes) => Ok(bytes),
        Err(source) => Err(PlayError::Request { url, source }),
    }
}
