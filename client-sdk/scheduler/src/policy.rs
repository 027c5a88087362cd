//! Scheduling policies: where each segment comes from.
//!
//! A [`Policy`] sees one segment at a time ([`SegmentDecision`]: deadline,
//! candidate sources with their projected finish times, swarm size, a random
//! draw) and answers with a [`Choice`]. It also decides when a late peer
//! transfer is completed from the CDN. Policies are plain values with named
//! thresholds, so the simulator can run several side by side.

use super::{Candidate, Locality, Millis, Mode, SegmentDecision, Source};

/// A policy's answer for one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Fetch it now from this source.
    Fetch(Source),
    /// Fetch it now from this infrastructure source to seed the swarm (live).
    Inject(Source),
    /// Not yet: there is slack, a peer may get it first. Unless something
    /// happens before (a peer announces it, a transfer ends), the decision
    /// would change at `until`: the scheduler asks to be polled then.
    Wait {
        /// When to decide again.
        until: Millis,
    },
}

/// A scheduling policy.
pub trait Policy {
    /// Short name for reports.
    fn name(&self) -> &'static str;

    /// Where segment `decision.sequence` should come from now.
    /// `injection_point` is true the first time a fresh live segment (no
    /// viewer holds it yet) is considered: the moment to decide whether this
    /// viewer injects it into the swarm from a seed or the CDN.
    fn choose(&mut self, decision: &SegmentDecision<'_>, injection_point: bool) -> Choice;

    /// Whether a peer transfer projected to finish at `projected` should be
    /// cut short and its missing bytes fetched from the CDN (which would
    /// finish them at `cdn_finish`).
    fn complete_from_cdn(
        &self,
        now: Millis,
        deadline: Millis,
        projected: Millis,
        cdn_finish: Millis,
    ) -> bool;

    /// Sort key of a candidate source: lower is better.
    fn rank(&self, candidate: &Candidate) -> u64;

    /// Segments due within this many milliseconds are urgent: fetched in
    /// deadline order even in VOD (rarest-first applies beyond).
    fn urgent_window_ms(&self) -> u64;

    /// Late completions after which a peer is dropped as slow.
    fn max_late_strikes(&self) -> u32;

    /// Segments a peer announced (HAVE or tracker holdings) and then said it
    /// does not hold, after which it is dropped as lying. Honest peers can
    /// do it now and then (a segment evicted between the announce and the
    /// request), so this is not 1.
    fn max_false_claims(&self) -> u32 {
        DEFAULT_MAX_FALSE_CLAIMS
    }
}

/// See [`Policy::max_false_claims`].
pub const DEFAULT_MAX_FALSE_CLAIMS: u32 = 4;

/// Thresholds of [`DeadlineFirst`]. Every number that shapes the trade-off
/// between offload and stalls has a name here.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadlineFirstThresholds {
    /// A source is given a segment only if it is projected to deliver this
    /// long before the deadline; a peer transfer projected to cross that line
    /// is completed from the CDN.
    pub safety_margin_ms: u64,
    /// Extra time kept in hand before the last safe moment to start an
    /// infrastructure fetch, while waiting for a peer to get the segment.
    pub infrastructure_lead_ms: u64,
    /// Ranking penalty of a peer in the same region but another ISP.
    pub other_isp_penalty_ms: u64,
    /// Ranking penalty of a peer in another region.
    pub other_region_penalty_ms: u64,
    /// Live: infrastructure copies of each new segment wanted per swarm; each
    /// viewer injects a fresh segment with probability
    /// `injection_copies / swarm size` (bounded below by `min_injection_share`).
    pub injection_copies: f64,
    /// Live: lower bound of the injection probability, so a swarm whose
    /// peers under-report still gets fresh segments quickly.
    pub min_injection_share: f64,
    /// Late completions after which a peer is dropped as slow.
    pub max_late_strikes: u32,
    /// See [`Policy::max_false_claims`].
    pub max_false_claims: u32,
    /// See [`Policy::urgent_window_ms`].
    pub urgent_window_ms: u64,
}

impl Default for DeadlineFirstThresholds {
    fn default() -> Self {
        Self {
            safety_margin_ms: 1_500,
            infrastructure_lead_ms: 1_000,
            other_isp_penalty_ms: 150,
            other_region_penalty_ms: 400,
            injection_copies: 2.0,
            min_injection_share: 0.02,
            max_late_strikes: 3,
            max_false_claims: DEFAULT_MAX_FALSE_CLAIMS,
            urgent_window_ms: 4_000,
        }
    }
}

/// The default policy: deadline first, peers when they can make it, seeds
/// before the CDN, the CDN when nothing else can, partial completion of late
/// peer transfers, live injection adapted to the swarm's size.
#[derive(Debug, Clone, Default)]
pub struct DeadlineFirst {
    /// The thresholds in force.
    pub thresholds: DeadlineFirstThresholds,
}

impl DeadlineFirst {
    /// The probability that one viewer injects a fresh live segment, for a
    /// swarm of `swarm_size` other viewers.
    pub fn injection_share(&self, swarm_size: usize) -> f64 {
        let t = &self.thresholds;
        (t.injection_copies / (swarm_size as f64 + 1.0)).clamp(t.min_injection_share, 1.0)
    }
}

impl Policy for DeadlineFirst {
    fn name(&self) -> &'static str {
        "deadline-first"
    }

    fn choose(&mut self, decision: &SegmentDecision<'_>, injection_point: bool) -> Choice {
        let t = &self.thresholds;
        let last_safe = Millis(decision.deadline.0.saturating_sub(t.safety_margin_ms));
        // The best infrastructure source: a seed that is safe, else the CDN
        // if it is safe, else whichever finishes first (at startup nothing
        // may be "safe"; then speed is all that matters).
        let infrastructure = decision
            .seeds
            .iter()
            .find(|seed| seed.projected_finish <= last_safe)
            .or_else(|| (decision.cdn.projected_finish <= last_safe).then_some(&decision.cdn))
            .unwrap_or_else(|| {
                decision
                    .seeds
                    .iter()
                    .chain(std::iter::once(&decision.cdn))
                    .min_by_key(|c| c.projected_finish)
                    .unwrap_or(&decision.cdn)
            });

        if injection_point
            && decision.mode == Mode::Live
            && decision.random < self.injection_share(decision.swarm_size)
        {
            return Choice::Inject(infrastructure.source);
        }
        if let Some(peer) = decision
            .peers
            .iter()
            .find(|peer| peer.projected_finish <= last_safe)
        {
            return Choice::Fetch(peer.source);
        }
        // No peer can make it (or none holds it yet). Wait while there is
        // slack, but start the infrastructure fetch in time.
        let infrastructure_ms = infrastructure.projected_finish.since(decision.now);
        let must_start_by = last_safe
            .0
            .saturating_sub(infrastructure_ms)
            .saturating_sub(t.infrastructure_lead_ms);
        if decision.now.0 >= must_start_by {
            Choice::Fetch(infrastructure.source)
        } else {
            Choice::Wait {
                until: Millis(must_start_by),
            }
        }
    }

    fn complete_from_cdn(
        &self,
        _now: Millis,
        deadline: Millis,
        projected: Millis,
        cdn_finish: Millis,
    ) -> bool {
        let last_safe = Millis(deadline.0.saturating_sub(self.thresholds.safety_margin_ms));
        projected > last_safe && cdn_finish < projected
    }

    fn rank(&self, candidate: &Candidate) -> u64 {
        let penalty = match candidate.locality {
            Locality::SameIsp => 0,
            Locality::SameRegion => self.thresholds.other_isp_penalty_ms,
            Locality::Remote => self.thresholds.other_region_penalty_ms,
        };
        candidate.projected_finish.0.saturating_add(penalty)
    }

    fn urgent_window_ms(&self) -> u64 {
        self.thresholds.urgent_window_ms
    }

    fn max_late_strikes(&self) -> u32 {
        self.thresholds.max_late_strikes
    }

    fn max_false_claims(&self) -> u32 {
        self.thresholds.max_false_claims
    }
}

/// P2P off: every segment from the CDN, as soon as it is in the window. The
/// baseline every offload figure is compared with.
#[derive(Debug, Clone, Copy, Default)]
pub struct CdnOnly;

impl Policy for CdnOnly {
    fn name(&self) -> &'static str {
        "cdn-only"
    }

    fn choose(&mut self, _decision: &SegmentDecision<'_>, _injection_point: bool) -> Choice {
        Choice::Fetch(Source::Cdn)
    }

    fn complete_from_cdn(&self, _: Millis, _: Millis, _: Millis, _: Millis) -> bool {
        false
    }

    fn rank(&self, candidate: &Candidate) -> u64 {
        candidate.projected_finish.0
    }

    fn urgent_window_ms(&self) -> u64 {
        u64::MAX
    }

    fn max_late_strikes(&self) -> u32 {
        u32::MAX
    }
}

/// A policy chosen at run time: the SDK's P2P switch (deadline-first or CDN
/// only) and the simulator's `policy` setting, one type for both.
#[derive(Debug, Clone)]
pub enum AnyPolicy {
    /// The default policy.
    DeadlineFirst(DeadlineFirst),
    /// P2P off: the baseline.
    CdnOnly(CdnOnly),
}

impl AnyPolicy {
    /// Parses a policy's [`Policy::name`]: "deadline-first" or "cdn-only".
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "deadline-first" => Some(Self::DeadlineFirst(DeadlineFirst::default())),
            "cdn-only" => Some(Self::CdnOnly(CdnOnly)),
            _ => None,
        }
    }

    fn inner(&self) -> &dyn Policy {
        match self {
            Self::DeadlineFirst(p) => p,
            Self::CdnOnly(p) => p,
        }
    }
}

impl Policy for AnyPolicy {
    fn name(&self) -> &'static str {
        self.inner().name()
    }

    fn choose(&mut self, decision: &SegmentDecision<'_>, injection_point: bool) -> Choice {
        match self {
            Self::DeadlineFirst(p) => p.choose(decision, injection_point),
            Self::CdnOnly(p) => p.choose(decision, injection_point),
        }
    }

    fn complete_from_cdn(
        &self,
        now: Millis,
        deadline: Millis,
        projected: Millis,
        cdn_finish: Millis,
    ) -> bool {
        self.inner()
            .complete_from_cdn(now, deadline, projected, cdn_finish)
    }

    fn rank(&self, candidate: &Candidate) -> u64 {
        self.inner().rank(candidate)
    }

    fn urgent_window_ms(&self) -> u64 {
        self.inner().urgent_window_ms()
    }

    fn max_late_strikes(&self) -> u32 {
        self.inner().max_late_strikes()
    }

    fn max_false_claims(&self) -> u32 {
        self.inner().max_false_claims()
    }
}
