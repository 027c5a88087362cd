//! The titles this server licenses: their renditions, the track type whose
//! key protects each rendition, and their key-period clock.

use std::collections::{BTreeSet, HashMap};

use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::Entitlement;

use crate::config::{RenditionConfig, TitleConfig};

/// The licensed titles, by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    titles: HashMap<String, TitleConfig>,
}

impl Catalog {
    /// A catalog of the configured titles (already validated).
    pub fn new(titles: &[TitleConfig]) -> Self {
        Self {
            titles: titles.iter().map(|t| (t.id.clone(), t.clone())).collect(),
        }
    }

    /// The title with this id.
    pub fn get(&self, id: &str) -> Option<&TitleConfig> {
        self.titles.get(id)
    }
}

impl TitleConfig {
    /// The key period current at `now`: 0 for VOD titles.
    pub fn current_period(&self, now: UnixSeconds) -> u32 {
        if self.key_period_s == 0 {
            return 0;
        }
        let elapsed = now.0.saturating_sub(self.period_epoch);
        u32::try_from(elapsed / self.key_period_s).unwrap_or(u32::MAX)
    }

    /// Whether some rendition of the title uses this track type.
    pub fn has_track_type(&self, track_type: &str) -> bool {
        self.renditions.iter().any(|r| r.track_type == track_type)
    }

    /// The renditions an entitlement allows, narrowed to `requested` when
    /// that is not empty. Unknown requested names are ignored.
    pub fn allowed_renditions<'a>(
        &'a self,
        entitlement: &Entitlement,
        requested: &[String],
    ) -> Vec<&'a RenditionConfig> {
        self.renditions
            .iter()
            .filter(|r| entitlement.allows_rendition(&r.name, r.height))
            .filter(|r| requested.is_empty() || requested.iter().any(|q| q == &r.name))
            .collect()
    }

    /// The track types of the named renditions (deduplicated, sorted).
    pub fn track_types_of<'a>(&'a self, renditions: &[String]) -> BTreeSet<&'a str> {
        self.renditions
            .iter()
            .filter(|r| renditions.iter().any(|name| name == &r.name))
            .map(|r| r.track_type.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn entitlement(renditions: &[&str], max_height: u32) -> Entitlement {
        Entitlement {
            account: "a".into(),
            titles: vec!["*".into()],
            max_concurrent_streams: 1,
            renditions: renditions.iter().map(|s| s.to_string()).collect(),
            max_height,
            issued_at: UnixSeconds(0),
            expires_at: UnixSeconds(1),
        }
    }

    #[test]
    fn renditions_are_narrowed_by_entitlement_height_and_request() {
        let demo = TitleConfig::demo();
        let names = |v: Vec<&RenditionConfig>| v.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(demo.allowed_renditions(&entitlement(&[], 720), &[])),
            ["audio", "360p", "720p"]
        );
        assert_eq!(
            names(demo.allowed_renditions(&entitlement(&["audio", "1080p"], 0), &[])),
            ["audio", "1080p"]
        );
        assert_eq!(
            names(demo.allowed_renditions(&entitlement(&[], 0), &["360p".into(), "nope".into()])),
            ["360p"]
        );
        let types = demo.track_types_of(&["audio".into(), "720p".into(), "1080p".into()]);
        assert_eq!(types.into_iter().collect::<Vec<_>>(), ["audio", "hd"]);
    }

    #[test]
    fn live_titles_rotate_periods() {
        let mut live = TitleConfig::demo();
        live.key_period_s = 600;
        live.period_epoch = 1000;
        assert_eq!(live.current_period(UnixSeconds(500)), 0);
        assert_eq!(live.current_period(UnixSeconds(1599)), 0);
        assert_eq!(live.current_period(UnixSeconds(1600)), 1);
        assert_eq!(TitleConfig::demo().current_period(UnixSeconds(99_999)), 0);
    }
}
