//! DASH input: a static MPD of clear CMAF whose representations address
//! separate files, an init segment and numbered media segments.
//!
//! Supported addressing, as DASH packagers write it for CMAF:
//! - `SegmentTemplate` with `initialization=` (or an `Initialization`
//!   child) and `media=` using `$RepresentationID$`, `$Number$` (with an
//!   optional `%0Nd` width), `$Bandwidth$` and, with a `SegmentTimeline`,
//!   `$Time$`. The segment count comes from the `SegmentTimeline` or from
//!   `@duration` and the period's (or presentation's) duration.
//! - `SegmentList` with an `Initialization@sourceURL` and `SegmentURL@media`.
//!
//! Templates inherit attribute by attribute from Period to AdaptationSet to
//! Representation, and `BaseURL`s resolve against each other and the MPD's
//! own location, as the DASH spec says. URLs must stay local (`file:` or
//! relative): the packager reads files, it does not download.
//!
//! Refused with an error naming the MPD: byte-range addressing
//! (`SegmentBase`, `@indexRange`, `@range`, `@mediaRange`, a single-file
//! representation), several Periods, a dynamic (live) MPD, a representation
//! without an init segment, and a template or list naming a missing file.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use super::{RenditionInput, input_error, sanitize};
use crate::error::PackageError;

/// Whether `text` looks like an MPD (an XML document whose root is `MPD`),
/// so callers can tell it from an HLS playlist without parsing.
pub(super) fn looks_like_mpd(path: &Path, text: &str) -> bool {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("mpd"))
        || (t.starts_with('<') && t.contains("<MPD"))
}

/// The renditions of the MPD at `path`, one per Representation, in document
/// order, named by `Representation@id`; every file it names must exist.
pub(super) fn discover_mpd(path: &Path, text: &str) -> Result<Vec<RenditionInput>, PackageError> {
    read_mpd(path, text, Files::MustExist, &Budget::default())
}

/// Reads the MPD `text` found at `path` as [`super::discover`] does, but
/// without touching the filesystem: URLs are resolved against `path` (made
/// absolute against the working directory when relative), and whether the
/// files they name exist is not checked. The pure core of the DASH input
/// (and its fuzz target).
pub fn parse_mpd(path: &Path, text: &str) -> Result<Vec<RenditionInput>, PackageError> {
    read_mpd(path, text, Files::Unchecked, &Budget::default())
}

/// Whether [`read_mpd`] checks that the files of each Representation exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Files {
    MustExist,
    Unchecked,
}

fn read_mpd(
    path: &Path,
    text: &str,
    files: Files,
    budget: &Budget,
) -> Result<Vec<RenditionInput>, PackageError> {
    let mpd: Mpd = quick_xml::de::from_str(text)
        .map_err(|e| input_error(path, format!("malformed MPD: {e}")))?;
    if mpd.kind.as_deref() == Some("dynamic") {
        return Err(input_error(
            path,
            "a dynamic (live) MPD is not supported: package a static MPD, or use `edge-seed live` on the encoder's directory",
        ));
    }
    let period = match mpd.periods.as_slice() {
        [] => return Err(input_error(path, "MPD has no Period")),
        [p] => p,
        _ => {
            return Err(input_error(
                path,
                format!(
                    "MPD has {} Periods; only single-period presentations are supported",
                    mpd.periods.len()
                ),
            ));
        }
    };
    let absolute = std::path::absolute(path).map_err(PackageError::io(path))?;
    let mpd_url = Url::from_file_path(&absolute)
        .map_err(|()| input_error(path, "the MPD's path cannot be expressed as a file URL"))?;
    let mpd_base = resolve_base(path, &mpd_url, &mpd.base_urls)?;
    let period_base = resolve_base(path, &mpd_base, &period.base_urls)?;
    let period_duration = period
        .duration
        .as_deref()
        .or(mpd.media_presentation_duration.as_deref())
        .map(|d| iso8601_seconds(d).ok_or_else(|| input_error(path, format!("bad duration {d:?}"))))
        .transpose()?;

    let mut out = Vec::new();
    for (a, set) in period.adaptation_sets.iter().enumerate() {
        let set_base = resolve_base(path, &period_base, &set.base_urls)?;
        if set.representations.is_empty() {
            return Err(input_error(
                path,
                format!("AdaptationSet {} has no Representation", set.label(a)),
            ));
        }
        for (r, rep) in set.representations.iter().enumerate() {
            let id = rep.id.clone().unwrap_or_else(|| format!("as{a}_r{r}"));
            let rep_base = resolve_base(path, &set_base, &rep.base_urls)?;
            let ctx = Ctx {
                mpd: path,
                id: &id,
                bandwidth: rep.bandwidth,
                base: &rep_base,
                budget,
            };
            let levels = [rep.addressing(), set.addressing(), period.addressing()];
            let (init, segments) = if levels.iter().any(|l| l.template.is_some()) {
                // Period first, each lower level overriding it.
                let template = levels
                    .iter()
                    .rev()
                    .filter_map(|l| l.template)
                    .fold(SegmentTemplate::default(), |acc, t| acc.inherit(t));
                from_template(&ctx, &template, period_duration)?
            } else if let Some(list) = levels.iter().find_map(|l| l.list) {
                // Only the nearest list's URLs count; an Initialization may
                // come from a higher level.
                let init = levels
                    .iter()
                    .filter_map(|l| l.list)
                    .find_map(|l| l.initialization.as_ref());
                from_list(&ctx, list, init)?
            } else if levels.iter().any(|l| l.base.is_some()) {
                return Err(ctx.error(
                    "SegmentBase (one file addressed by byte ranges) is not supported: \
                     split the representation into an init segment and media segment files",
                ));
            } else {
                return Err(ctx.error(
                    "no SegmentTemplate or SegmentList: a single-file representation \
                     (byte ranges) is not supported",
                ));
            };
            for file in std::iter::once(&init).chain(&segments) {
                if files == Files::MustExist && !file.is_file() {
                    return Err(input_error(
                        file,
                        format!(
                            "missing: listed by {} for Representation {id}",
                            path.display()
                        ),
                    ));
                }
            }
            out.push(RenditionInput {
                name: sanitize(&id),
                init,
                segments,
            });
        }
    }
    Ok(out)
}

/// What one Representation's files are resolved with.
struct Ctx<'a> {
    mpd: &'a Path,
    id: &'a str,
    bandwidth: Option<u64>,
    base: &'a Url,
    /// What is left of the presentation's bounds, shared by its
    /// Representations.
    budget: &'a Budget,
}

/// The paths an MPD may still resolve to, in number and in bytes. A
/// template addresses up to [`MAX_PATHS`] segments in a few bytes, and each
/// Representation can repeat it, so the bounds are the whole
/// presentation's, not one Representation's.
#[derive(Debug)]
struct Budget {
    paths: Cell<usize>,
    bytes: Cell<usize>,
}

impl Default for Budget {
    /// A whole MPD's.
    fn default() -> Self {
        Self {
            paths: Cell::new(MAX_PATHS),
            bytes: Cell::new(MAX_PATH_BYTES),
        }
    }
}

/// Paths (init and media segments) one MPD may list, all Representations
/// together: 1,000,000 two-second segments are 23 days of one rendition.
const MAX_PATHS: usize = 1_000_000;
/// Bytes those paths may take (1,000,000 paths of 256 bytes).
const MAX_PATH_BYTES: usize = 256 << 20;

impl Ctx<'_> {
    fn error(&self, message: impl std::fmt::Display) -> PackageError {
        input_error(self.mpd, format!("Representation {}: {message}", self.id))
    }

    /// A URL of the MPD (relative or `file:`) as a local path, taken from
    /// the presentation's [`Budget`].
    fn file(&self, what: &str, reference: &str) -> Result<PathBuf, PackageError> {
        let url = self
            .base
            .join(reference)
            .map_err(|e| self.error(format!("{what} URL {reference:?}: {e}")))?;
        let path = local_path(&url).ok_or_else(|| {
            self.error(format!(
                "{what} URL {url} is not a local file: the packager reads files, download the presentation first"
            ))
        })?;
        let paths = self.budget.paths.get().checked_sub(1);
        let bytes = self.budget.bytes.get().checked_sub(path.as_os_str().len());
        let (Some(paths), Some(bytes)) = (paths, bytes) else {
            return Err(self.error(format!(
                "more than {MAX_PATHS} segments or {} MiB of paths in the MPD",
                MAX_PATH_BYTES >> 20
            )));
        };
        self.budget.paths.set(paths);
        self.budget.bytes.set(bytes);
        Ok(path)
    }

    /// Segments this Representation may still list (its init segment
    /// aside): what the presentation's budget has left.
    fn segments_left(&self) -> usize {
        self.budget.paths.get().saturating_sub(1)
    }
}

fn local_path(url: &Url) -> Option<PathBuf> {
    if url.scheme() != "file" {
        return None;
    }
    url.to_file_path().ok()
}

/// Resolves the first `BaseURL` of a level against `parent` (further
/// `BaseURL`s are alternative locations of the same content).
fn resolve_base(mpd: &Path, parent: &Url, base_urls: &[String]) -> Result<Url, PackageError> {
    let Some(first) = base_urls.first() else {
        return Ok(parent.clone());
    };
    let url = parent
        .join(first.trim())
        .map_err(|e| input_error(mpd, format!("BaseURL {first:?}: {e}")))?;
    if url.scheme() != "file" {
        return Err(input_error(
            mpd,
            format!(
                "BaseURL {url} is not a local file: the packager reads files, download the presentation first"
            ),
        ));
    }
    Ok(url)
}

fn refuse_range(ctx: &Ctx<'_>, init: &UrlType) -> Result<(), PackageError> {
    if init.range.is_some() {
        return Err(ctx.error(
            "Initialization@range (byte-range addressing) is not supported: the init segment must be its own file",
        ));
    }
    Ok(())
}

fn from_template(
    ctx: &Ctx<'_>,
    t: &SegmentTemplate,
    period_duration: Option<f64>,
) -> Result<(PathBuf, Vec<PathBuf>), PackageError> {
    if t.index.is_some() {
        return Err(ctx.error("SegmentTemplate@index (segment index files) is not supported"));
    }
    let init_template = match (&t.initialization_attr, &t.initialization) {
        (Some(a), _) => a.clone(),
        (None, Some(i)) => {
            refuse_range(ctx, i)?;
            i.source_url
                .clone()
                .ok_or_else(|| ctx.error("missing init segment: Initialization has no sourceURL"))?
        }
        (None, None) => {
            return Err(ctx.error(
                "missing init segment: SegmentTemplate has no initialization= (only CMAF with a separate init segment is supported)",
            ));
        }
    };
    let media = t
        .media
        .as_deref()
        .ok_or_else(|| ctx.error("SegmentTemplate has no media= template"))?;
    let start = t.start_number.unwrap_or(1);
    let timescale = t.timescale.unwrap_or(1);
    if timescale == 0 {
        return Err(ctx.error("SegmentTemplate@timescale is 0"));
    }
    let pto = t.presentation_time_offset.unwrap_or(0);
    let max_segments = ctx.segments_left();
    let too_many = || ctx.error(format!("more than {MAX_PATHS} segments in the MPD"));
    let number = |i: usize| {
        start
            .checked_add(i as u64)
            .ok_or_else(|| ctx.error(format!("segment number {start} + {i} overflows")))
    };
    // (number, time) of every segment.
    let mut numbered: Vec<(u64, Option<u64>)> = Vec::new();
    if let Some(timeline) = &t.timeline {
        let end = period_duration.map(|s| pto.saturating_add((s * timescale as f64) as u64));
        let mut time = pto;
        for (i, s) in timeline.segments.iter().enumerate() {
            if let Some(t) = s.t {
                time = t;
            }
            if s.d == 0 {
                return Err(ctx.error(format!("SegmentTimeline S #{i} has d=0")));
            }
            let repeat = match s.r.unwrap_or(0) {
                r if r >= 0 => r as u64,
                _ => {
                    // Negative r: repeat up to the next S@t or the period's end.
                    let until = timeline
                        .segments
                        .get(i + 1)
                        .and_then(|n| n.t)
                        .or(end)
                        .ok_or_else(|| {
                            ctx.error("SegmentTimeline r=-1 needs a following S@t or a known period duration")
                        })?;
                    until.saturating_sub(time).div_ceil(s.d).saturating_sub(1)
                }
            };
            for _ in 0..=repeat {
                if numbered.len() >= max_segments {
                    return Err(too_many());
                }
                numbered.push((number(numbered.len())?, Some(time)));
                time = time.saturating_add(s.d);
            }
        }
    } else {
        let duration = t.duration.filter(|d| *d > 0).ok_or_else(|| {
            ctx.error("SegmentTemplate has neither a SegmentTimeline nor a duration")
        })?;
        let seconds = period_duration.ok_or_else(|| {
            ctx.error(
                "the segment count is unknown: SegmentTemplate@duration needs Period@duration or MPD@mediaPresentationDuration",
            )
        })?;
        let exact = seconds * timescale as f64 / duration as f64;
        // Durations like PT20.000S land a hair above an integer.
        let count = if (exact - exact.round()).abs() < 1e-6 {
            exact.round()
        } else {
            exact.ceil()
        };
        if count.is_nan() || count < 0.0 {
            return Err(ctx.error(format!("segment count {count} out of range")));
        }
        if count > max_segments as f64 {
            return Err(too_many());
        }
        for i in 0..count as usize {
            numbered.push((number(i)?, None));
        }
    }
    if numbered.is_empty() {
        return Err(ctx.error("SegmentTemplate lists no segments"));
    }
    let init = ctx.file("initialization", &expand(ctx, &init_template, None, None)?)?;
    let segments = numbered
        .into_iter()
        .map(|(n, time)| ctx.file("media", &expand(ctx, media, Some(n), time)?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((init, segments))
}

fn from_list(
    ctx: &Ctx<'_>,
    list: &SegmentList,
    init: Option<&UrlType>,
) -> Result<(PathBuf, Vec<PathBuf>), PackageError> {
    let init = init.ok_or_else(|| {
        ctx.error("missing init segment: SegmentList has no Initialization (only CMAF with a separate init segment is supported)")
    })?;
    refuse_range(ctx, init)?;
    let init = init
        .source_url
        .as_deref()
        .ok_or_else(|| ctx.error("missing init segment: Initialization has no sourceURL"))?;
    let init = ctx.file("initialization", init)?;
    if list.segment_urls.is_empty() {
        return Err(ctx.error("SegmentList lists no SegmentURL"));
    }
    let mut segments = Vec::with_capacity(list.segment_urls.len());
    for (i, s) in list.segment_urls.iter().enumerate() {
        if s.media_range.is_some() {
            return Err(ctx.error(format!(
                "SegmentURL #{i} has a mediaRange (byte-range addressing), which is not supported"
            )));
        }
        let media = s
            .media
            .as_deref()
            .ok_or_else(|| ctx.error(format!("SegmentURL #{i} has no media")))?;
        segments.push(ctx.file("media", media)?);
    }
    Ok((init, segments))
}

/// Substitutes the identifiers of a DASH template (ISO/IEC 23009-1
/// 5.3.9.4.4): `$$`, `$RepresentationID$`, `$Bandwidth$`, `$Number$` and
/// `$Time$`, the last three with an optional `%0<width><d|i|u|x|X|o>`.
fn expand(
    ctx: &Ctx<'_>,
    template: &str,
    number: Option<u64>,
    time: Option<u64>,
) -> Result<String, PackageError> {
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    while let Some(open) = rest.find('$') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('$')
            .ok_or_else(|| ctx.error(format!("template {template:?} has an unclosed $")))?;
        let ident = &after[..close];
        rest = &after[close + 1..];
        if ident.is_empty() {
            out.push('$');
            continue;
        }
        let (name, format) = match ident.split_once('%') {
            Some((n, f)) => (n, Some(f)),
            None => (ident, None),
        };
        let value = match name {
            "RepresentationID" if format.is_none() => {
                out.push_str(ctx.id);
                continue;
            }
            "Number" => number,
            "Time" => time,
            "Bandwidth" => ctx.bandwidth,
            _ => None,
        };
        let value = value.ok_or_else(|| {
            ctx.error(format!(
                "template {template:?}: ${ident}$ is not supported here (number-based templates with $RepresentationID$, $Number$, $Bandwidth$, and $Time$ with a SegmentTimeline)"
            ))
        })?;
        out.push_str(
            &format_value(value, format).ok_or_else(|| {
                ctx.error(format!("template {template:?}: bad format in ${ident}$"))
            })?,
        );
    }
    out.push_str(rest);
    Ok(out)
}

fn format_value(value: u64, format: Option<&str>) -> Option<String> {
    let Some(f) = format else {
        return Some(value.to_string());
    };
    // The conversion is the last character, which the MPD's text may make
    // any character: split on a character, not a byte.
    let conv = f.chars().next_back()?;
    let width = &f[..f.len() - conv.len_utf8()];
    let width: usize = if width.is_empty() {
        0
    } else if width.bytes().all(|b| b.is_ascii_digit()) {
        // The spec's form is %0<width>; a width without the 0 pads with
        // zeros too in every packager seen, so accept both.
        width.parse().ok().filter(|w| *w <= 32)?
    } else {
        return None;
    };
    Some(match conv {
        'd' | 'i' | 'u' => format!("{value:0width$}"),
        'x' => format!("{value:0width$x}"),
        'X' => format!("{value:0width$X}"),
        'o' => format!("{value:0width$o}"),
        _ => return None,
    })
}

/// Seconds of an ISO 8601 duration as MPDs write them (`PT1H2M3.5S`,
/// `P1DT2H`); years and months are refused (their length is ambiguous).
fn iso8601_seconds(text: &str) -> Option<f64> {
    let rest = text.trim().strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = 0.0;
    let mut any = false;
    for (part, units) in [
        (date, &[('D', 86_400.0)][..]),
        (
            time.unwrap_or(""),
            &[('H', 3600.0), ('M', 60.0), ('S', 1.0)][..],
        ),
    ] {
        let mut number = String::new();
        let mut allowed = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            // Units must come in order, each at most once.
            let (_, factor) = allowed.by_ref().find(|(u, _)| *u == c)?;
            let n: f64 = number.parse().ok()?;
            total += n * factor;
            number.clear();
            any = true;
        }
        if !number.is_empty() {
            return None;
        }
    }
    (any && total.is_finite()).then_some(total)
}

// The subset of the MPD schema the packager reads. Unknown elements and
// attributes are ignored (serde's default), namespaces are matched by
// local name (quick-xml's default), so `cenc:`/`dashif:` extensions in an
// input do not get in the way.

#[derive(Debug, Deserialize)]
struct Mpd {
    #[serde(rename = "@type")]
    kind: Option<String>,
    #[serde(rename = "@mediaPresentationDuration")]
    media_presentation_duration: Option<String>,
    #[serde(rename = "BaseURL", default)]
    base_urls: Vec<String>,
    #[serde(rename = "Period", default)]
    periods: Vec<Period>,
}

#[derive(Debug, Deserialize)]
struct Period {
    #[serde(rename = "@duration")]
    duration: Option<String>,
    #[serde(rename = "BaseURL", default)]
    base_urls: Vec<String>,
    #[serde(rename = "SegmentTemplate")]
    template: Option<SegmentTemplate>,
    #[serde(rename = "SegmentList")]
    list: Option<SegmentList>,
    #[serde(rename = "SegmentBase")]
    base: Option<SegmentBase>,
    #[serde(rename = "AdaptationSet", default)]
    adaptation_sets: Vec<AdaptationSet>,
}

#[derive(Debug, Deserialize)]
struct AdaptationSet {
    #[serde(rename = "@id")]
    id: Option<String>,
    #[serde(rename = "@contentType")]
    content_type: Option<String>,
    #[serde(rename = "BaseURL", default)]
    base_urls: Vec<String>,
    #[serde(rename = "SegmentTemplate")]
    template: Option<SegmentTemplate>,
    #[serde(rename = "SegmentList")]
    list: Option<SegmentList>,
    #[serde(rename = "SegmentBase")]
    base: Option<SegmentBase>,
    #[serde(rename = "Representation", default)]
    representations: Vec<Representation>,
}

impl AdaptationSet {
    fn label(&self, index: usize) -> String {
        match (&self.id, &self.content_type) {
            (Some(id), _) => format!("id={id}"),
            (None, Some(ct)) => format!("#{index} ({ct})"),
            (None, None) => format!("#{index}"),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Representation {
    #[serde(rename = "@id")]
    id: Option<String>,
    #[serde(rename = "@bandwidth")]
    bandwidth: Option<u64>,
    #[serde(rename = "BaseURL", default)]
    base_urls: Vec<String>,
    #[serde(rename = "SegmentTemplate")]
    template: Option<SegmentTemplate>,
    #[serde(rename = "SegmentList")]
    list: Option<SegmentList>,
    #[serde(rename = "SegmentBase")]
    base: Option<SegmentBase>,
}

/// The three ways a level may address its segments. (Not a
/// `#[serde(flatten)]` field: quick-xml cannot give flattened structs
/// numeric attributes.)
#[derive(Debug, Clone, Copy)]
struct Addressing<'a> {
    template: Option<&'a SegmentTemplate>,
    list: Option<&'a SegmentList>,
    base: Option<&'a SegmentBase>,
}

macro_rules! addressing {
    ($($t:ty),*) => {$(
        impl $t {
            fn addressing(&self) -> Addressing<'_> {
                Addressing {
                    template: self.template.as_ref(),
                    list: self.list.as_ref(),
                    base: self.base.as_ref(),
                }
            }
        }
    )*};
}
addressing!(Period, AdaptationSet, Representation);

#[derive(Debug, Clone, Default, Deserialize)]
struct SegmentTemplate {
    #[serde(rename = "@media")]
    media: Option<String>,
    #[serde(rename = "@initialization")]
    initialization_attr: Option<String>,
    #[serde(rename = "@index")]
    index: Option<String>,
    #[serde(rename = "@startNumber")]
    start_number: Option<u64>,
    #[serde(rename = "@timescale")]
    timescale: Option<u64>,
    #[serde(rename = "@duration")]
    duration: Option<u64>,
    #[serde(rename = "@presentationTimeOffset")]
    presentation_time_offset: Option<u64>,
    #[serde(rename = "Initialization")]
    initialization: Option<UrlType>,
    #[serde(rename = "SegmentTimeline")]
    timeline: Option<SegmentTimeline>,
}

impl SegmentTemplate {
    /// `self` (inherited from a higher level) overridden by `lower`'s
    /// attributes and elements where it has them.
    fn inherit(self, lower: &SegmentTemplate) -> SegmentTemplate {
        let lower = lower.clone();
        SegmentTemplate {
            media: lower.media.or(self.media),
            initialization_attr: lower.initialization_attr.or(self.initialization_attr),
            index: lower.index.or(self.index),
            start_number: lower.start_number.or(self.start_number),
            timescale: lower.timescale.or(self.timescale),
            duration: lower.duration.or(self.duration),
            presentation_time_offset: lower
                .presentation_time_offset
                .or(self.presentation_time_offset),
            initialization: lower.initialization.or(self.initialization),
            timeline: lower.timeline.or(self.timeline),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct UrlType {
    #[serde(rename = "@sourceURL")]
    source_url: Option<String>,
    #[serde(rename = "@range")]
    range: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct SegmentTimeline {
    #[serde(rename = "S", default)]
    segments: Vec<TimelineEntry>,
}

#[derive(Debug, Clone, Deserialize)]
struct TimelineEntry {
    #[serde(rename = "@t")]
    t: Option<u64>,
    #[serde(rename = "@d")]
    d: u64,
    #[serde(rename = "@r")]
    r: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct SegmentList {
    #[serde(rename = "Initialization")]
    initialization: Option<UrlType>,
    #[serde(rename = "SegmentURL", default)]
    segment_urls: Vec<SegmentUrl>,
}

#[derive(Debug, Deserialize)]
struct SegmentUrl {
    #[serde(rename = "@media")]
    media: Option<String>,
    #[serde(rename = "@mediaRange")]
    media_range: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SegmentBase {
    #[serde(rename = "@indexRange")]
    _index_range: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations() {
        assert_eq!(iso8601_seconds("PT20.000S"), Some(20.0));
        assert_eq!(iso8601_seconds("PT1H2M3.5S"), Some(3723.5));
        assert_eq!(iso8601_seconds("P1DT1S"), Some(86_401.0));
        assert_eq!(iso8601_seconds("PT"), None);
        assert_eq!(iso8601_seconds("P1Y"), None);
        assert_eq!(iso8601_seconds("PT1S2M"), None);
        assert_eq!(iso8601_seconds("20"), None);
    }

    #[test]
    fn parse_mpd_resolves_without_the_files() {
        // Nothing exists at /nowhere: parse_mpd resolves, discover refuses.
        let mpd = r#"<MPD type="static" mediaPresentationDuration="PT4S"><Period>
  <AdaptationSet><SegmentTemplate duration="2" startNumber="0"
    initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/s$Number%03d$.m4s"/>
    <Representation id="v 1"/>
  </AdaptationSet>
  <AdaptationSet><Representation id="a"><BaseURL>audio/</BaseURL><SegmentList>
    <Initialization sourceURL="i.mp4"/><SegmentURL media="0.m4s"/></SegmentList></Representation>
  </AdaptationSet></Period></MPD>"#;
        let path = Path::new("/nowhere/in.mpd");
        let renditions = parse_mpd(path, mpd).unwrap();
        assert_eq!(
            renditions,
            vec![
                RenditionInput {
                    name: "v_1".into(),
                    init: PathBuf::from("/nowhere/v 1/init.mp4"),
                    segments: vec![
                        PathBuf::from("/nowhere/v 1/s000.m4s"),
                        PathBuf::from("/nowhere/v 1/s001.m4s"),
                    ],
                },
                RenditionInput {
                    name: "a".into(),
                    init: PathBuf::from("/nowhere/audio/i.mp4"),
                    segments: vec![PathBuf::from("/nowhere/audio/0.m4s")],
                },
            ]
        );
        let err = discover_mpd(path, mpd).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    /// An MPD of `reps` Representations sharing one SegmentTemplate with
    /// `attributes` (besides init and media) and `children`.
    fn template_mpd(reps: usize, attributes: &str, children: &str) -> String {
        let reps: String = (0..reps)
            .map(|i| format!(r#"<Representation id="r{i}"/>"#))
            .collect();
        format!(
            r#"<MPD type="static" mediaPresentationDuration="PT4S"><Period>
<SegmentTemplate {attributes} initialization="i.mp4" media="s$Number$.m4s">{children}</SegmentTemplate>
<AdaptationSet>{reps}</AdaptationSet></Period></MPD>"#
        )
    }

    fn read_within(mpd: &str, paths: usize, bytes: usize) -> Result<usize, String> {
        let budget = Budget {
            paths: Cell::new(paths),
            bytes: Cell::new(bytes),
        };
        read_mpd(Path::new("/p/in.mpd"), mpd, Files::Unchecked, &budget)
            .map(|r| r.len())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn bounds_are_the_whole_presentations() {
        // Found by review while fuzzing (dash_mpd): each Representation may
        // repeat a template of up to a million segments, so a 270-byte MPD
        // of 3 Representations listed 3 million paths (a minute and 850 MB
        // under the fuzzer), and more Representations made it unbounded.
        let number = template_mpd(3, r#"duration="1" startNumber="0""#, "");
        let timeline = template_mpd(
            3,
            r#"timescale="1""#,
            r#"<SegmentTimeline><S d="1" r="3"/></SegmentTimeline>"#,
        );
        for mpd in [number, timeline] {
            // 3 Representations of an init and 4 segments: 15 paths.
            assert_eq!(read_within(&mpd, 15, 1 << 20), Ok(3));
            for paths in [1, 5, 10, 14] {
                let err = read_within(&mpd, paths, 1 << 20).unwrap_err();
                assert!(err.contains("segments"), "{err}");
            }
            // 44 bytes of paths a Representation ("/p/i.mp4", "/p/s0.m4s"...).
            let err = read_within(&mpd, 15, 60).unwrap_err();
            assert!(err.contains("MiB of paths in the MPD"), "{err}");
        }
    }

    #[test]
    fn segment_numbers_do_not_overflow() {
        let start = r#"startNumber="18446744073709551615""#;
        for mpd in [
            template_mpd(1, &format!(r#"duration="1" {start}"#), ""),
            template_mpd(
                1,
                &format!(r#"timescale="1" {start}"#),
                r#"<SegmentTimeline><S d="1" r="1"/></SegmentTimeline>"#,
            ),
        ] {
            let err = read_within(&mpd, MAX_PATHS, MAX_PATH_BYTES).unwrap_err();
            assert!(err.contains("overflows"), "{err}");
        }
    }

    #[test]
    fn template_formats_end_in_any_character() {
        // Found by the dash_mpd fuzz target: `$Number%0ƛ$` (a format whose
        // last character is not ASCII) split the format inside that
        // character, a panic.
        for format in ["%0ƛ", "%ƛ", "%1ƛ", "%", "%+5d", "%-5d", "% 5d", "%05"] {
            let mpd = template_mpd(1, r#"duration="1""#, "")
                .replace("s$Number$.m4s", &format!("s$Number{format}$.m4s"));
            let err = read_within(&mpd, MAX_PATHS, MAX_PATH_BYTES).unwrap_err();
            assert!(err.contains("bad format"), "{format}: {err}");
        }
        assert_eq!(format_value(42, Some("05d")).as_deref(), Some("00042"));
        assert_eq!(format_value(255, Some("x")).as_deref(), Some("ff"));
        assert_eq!(format_value(7, None).as_deref(), Some("7"));
    }

    #[test]
    fn template_identifiers() {
        let base = Url::parse("file:///x/").unwrap();
        let budget = Budget::default();
        let ctx = Ctx {
            mpd: Path::new("m.mpd"),
            id: "v1",
            bandwidth: Some(800),
            base: &base,
            budget: &budget,
        };
        let e = |t: &str| expand(&ctx, t, Some(7), Some(9000));
        assert_eq!(
            e("$RepresentationID$/seg_$Number%05d$.m4s").unwrap(),
            "v1/seg_00007.m4s"
        );
        assert_eq!(e("$Bandwidth$-$Time$-$$-$Number$").unwrap(), "800-9000-$-7");
        assert_eq!(e("$Number%x$").unwrap(), "7");
        assert!(e("$SubNumber$").is_err());
        assert!(e("$Number").is_err());
        assert!(e("$Number%05q$").is_err());
        assert!(expand(&ctx, "$Time$", Some(1), None).is_err());
    }
}
