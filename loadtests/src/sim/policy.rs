//! The policies the simulator can run, behind one type.

use loaves_client_sdk::scheduler::{
    Candidate, CdnOnly, Choice, DeadlineFirst, Millis, Policy, SegmentDecision,
};

/// Which scheduling policy a simulated viewer runs.
#[derive(Debug, Clone)]
pub enum AnyPolicy {
    /// The default policy.
    DeadlineFirst(DeadlineFirst),
    /// P2P off: the baseline.
    CdnOnly(CdnOnly),
}

impl AnyPolicy {
    /// Parses "deadline-first" or "cdn-only".
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
        cdn: Millis,
    ) -> bool {
        self.inner()
            .complete_from_cdn(now, deadline, projected, cdn)
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
}
