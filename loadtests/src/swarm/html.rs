//! The HTML report: one self-contained file (inline SVG, no script, no
//! external URL) with the report's table and three plots: offload over
//! time by source, viewers' buffer levels, and the stall timeline.

use std::fmt::Write as _;

use super::{Role, SwarmRun};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 30.0;
const PEER: &str = "#2a9d8f";
const SEED: &str = "#e9c46a";
const CDN: &str = "#e76f51";

/// The report page of `run` (and its baseline).
pub fn page(scenario: &super::Scenario, run: &SwarmRun, baseline: Option<&SwarmRun>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Loaves swarm: {name}</title>\
<style>body{{font-family:sans-serif;margin:2em;max-width:960px}}table{{border-collapse:collapse}}\
td,th{{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}}td:first-child{{text-align:left}}\
svg{{background:#fafafa;border:1px solid #ddd}}.legend span{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}}</style>\
</head><body>\n<h1>Swarm scenario: {name}</h1>\n<p>{desc}</p>\n",
        name = escape(&scenario.name),
        desc = escape(&scenario.description)
    );
    let _ = writeln!(
        out,
        "<h2>Summary</h2>\n<pre>{}</pre>\n<p>Peers banned by honest viewers: {}; segments they rejected: {}.</p>",
        escape(&crate::demo::table(
            &run.report,
            baseline.map(|b| &b.report)
        )),
        run.peers_banned,
        run.segments_rejected
    );
    if !run.titles.is_empty() {
        out.push_str(&titles_section(run, baseline));
    }
    if !run.faults.is_empty() {
        out.push_str("<p>Faults: ");
        for (i, f) in run.faults.iter().enumerate() {
            let _ = write!(
                out,
                "{}{} at {:.1} s",
                if i > 0 { "; " } else { "" },
                escape(&f.what),
                f.t_s
            );
        }
        out.push_str("</p>\n");
    }
    let end = run
        .traces
        .iter()
        .map(|t| t.left_s)
        .chain(run.samples.iter().map(|s| s.t_s))
        .fold(1.0f64, f64::max);
    out.push_str("<h2 id=\"offload\">Offload over time by source</h2>\n");
    out.push_str(&format!(
        "<p class=\"legend\"><span style=\"background:{PEER}\"></span>peers<span style=\"background:{SEED}\"></span>seed<span style=\"background:{CDN}\"></span>CDN — share of the bytes received in each second</p>\n"
    ));
    out.push_str(&offload_plot(run, end));
    out.push_str("<h2 id=\"buffer\">Buffer levels</h2>\n<p>Media buffered ahead of each viewer's playhead (seconds); grey: honest viewers, red: misbehaving ones.</p>\n");
    out.push_str(&buffer_plot(run, end));
    out.push_str("<h2 id=\"stalls\">Stall timeline</h2>\n<p>One row per viewer: watching (grey), stalled (red); faults as vertical lines.</p>\n");
    out.push_str(&stall_plot(run, end));
    out.push_str("</body></html>\n");
    out
}

/// The VOD run's rows, one per title's swarm.
fn titles_section(run: &SwarmRun, baseline: Option<&SwarmRun>) -> String {
    let mut out = String::from(
        "<h2 id=\"titles\">Per title</h2>\n<p>Each title is its own swarm; its offload limit counts its viewers only, and the run's limit is the titles' weighted by the bytes watched.</p>\n<table><tr><th>title</th><th>expected share</th><th>viewers</th><th>MB received</th><th>peer offload</th><th>offload limit</th><th>rebuffer ratio (events)</th>",
    );
    if baseline.is_some() {
        out.push_str("<th>cdn-only rebuffer ratio (events)</th>");
    }
    out.push_str("</tr>\n");
    for row in &run.titles {
        let r = &row.report;
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.3}</td><td>{}</td><td>{:.1}</td><td>{:.3}</td><td>{:.3}</td><td>{:.4} ({})</td>",
            escape(&row.title),
            row.popularity,
            r.viewers,
            r.bytes_total() as f64 / 1e6,
            r.offload_peer,
            r.offload_limit,
            r.rebuffer_ratio,
            r.rebuffer_events
        );
        if let Some(baseline) = baseline {
            match baseline.titles.iter().find(|t| t.title == row.title) {
                Some(b) => {
                    let _ = write!(
                        out,
                        "<td>{:.4} ({})</td>",
                        b.report.rebuffer_ratio, b.report.rebuffer_events
                    );
                }
                None => out.push_str("<td>-</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn x_of(t: f64, end: f64) -> f64 {
    LEFT + (WIDTH - LEFT - RIGHT) * (t / end).clamp(0.0, 1.0)
}

fn frame(out: &mut String, id: &str, height: f64, end: f64, y_label: &str) {
    let _ = writeln!(
        out,
        "<svg id=\"{id}-plot\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\">"
    );
    let bottom = height - BOTTOM;
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"#333\"/>\n<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"#333\"/>",
        WIDTH - RIGHT
    );
    // Time ticks: about ten.
    let step = nice_step(end / 10.0);
    let mut t = 0.0;
    for _ in 0..50 {
        if t > end {
            break;
        }
        let x = x_of(t, end);
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{t:.0}s</text>",
            bottom + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        out,
        "<text x=\"12\" y=\"{:.1}\" font-size=\"11\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{y_label}</text>",
        height / 2.0,
        height / 2.0
    );
}

fn nice_step(raw: f64) -> f64 {
    for step in [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0] {
        if step >= raw {
            return step;
        }
    }
    600.0
}

fn offload_plot(run: &SwarmRun, end: f64) -> String {
    let mut out = String::new();
    frame(&mut out, "offload", HEIGHT, end, "share of bytes");
    let bottom = HEIGHT - BOTTOM;
    let span = bottom - TOP;
    for pair in run.samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let peer = b.peer.saturating_sub(a.peer) as f64;
        let seed = b.seed.saturating_sub(a.seed) as f64;
        let cdn = b.cdn.saturating_sub(a.cdn) as f64;
        let total = peer + seed + cdn;
        if total <= 0.0 {
            continue;
        }
        let x = x_of(a.t_s, end);
        let w = (x_of(b.t_s, end) - x).max(0.5);
        let mut y = bottom;
        for (bytes, colour) in [(peer, PEER), (seed, SEED), (cdn, CDN)] {
            let h = span * bytes / total;
            y -= h;
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{colour}\"/>"
            );
        }
        out.push('\n');
    }
    for (label, share) in [("0%", 0.0), ("50%", 0.5), ("100%", 1.0)] {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{label}</text>",
            LEFT - 4.0,
            bottom - span * share + 4.0
        );
    }
    fault_lines(&mut out, run, end, HEIGHT);
    out.push_str("</svg>\n");
    out
}

fn buffer_plot(run: &SwarmRun, end: f64) -> String {
    let mut out = String::new();
    frame(&mut out, "buffer", HEIGHT, end, "seconds buffered");
    let bottom = HEIGHT - BOTTOM;
    let max = run
        .traces
        .iter()
        .flat_map(|t| t.buffer.iter().map(|(_, b)| *b))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_of = |b: f64| bottom - (bottom - TOP) * (b / max).clamp(0.0, 1.0);
    for trace in &run.traces {
        if trace.buffer.is_empty() {
            continue;
        }
        let colour = if trace.role == Some(Role::Honest) {
            "#555"
        } else {
            "#c00"
        };
        let points: Vec<String> = trace
            .buffer
            .iter()
            .map(|(t, b)| format!("{:.1},{:.1}", x_of(*t, end), y_of(*b)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-opacity=\"0.5\" stroke-width=\"1\" points=\"{}\"><title>{}</title></polyline>",
            points.join(" "),
            escape(&trace.account)
        );
    }
    for b in [0.0, max / 2.0, max] {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{b:.0}</text>",
            LEFT - 4.0,
            y_of(b) + 4.0
        );
    }
    fault_lines(&mut out, run, end, HEIGHT);
    out.push_str("</svg>\n");
    out
}

fn stall_plot(run: &SwarmRun, end: f64) -> String {
    let rows = run.traces.len().max(1) as f64;
    let row = (200.0 / rows).clamp(3.0, 14.0);
    let height = TOP + BOTTOM + row * rows;
    let mut out = String::new();
    frame(&mut out, "stalls", height, end, "viewers");
    for (i, trace) in run.traces.iter().enumerate() {
        let y = TOP + row * i as f64;
        let h = (row - 1.0).max(1.0);
        let x = x_of(trace.joined_s, end);
        let w = (x_of(trace.left_s, end) - x).max(0.5);
        let colour = if trace.role == Some(Role::Honest) {
            "#ccc"
        } else {
            "#f4b6b6"
        };
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>{}</title></rect>",
            escape(&trace.account)
        );
        for (a, b) in &trace.stalls {
            let sx = x_of(*a, end);
            let sw = (x_of(*b, end) - sx).max(1.5);
            let _ = write!(
                out,
                "<rect class=\"stall\" x=\"{sx:.1}\" y=\"{y:.1}\" width=\"{sw:.1}\" height=\"{h:.1}\" fill=\"#d00\"/>"
            );
        }
        out.push('\n');
    }
    fault_lines(&mut out, run, end, height);
    out.push_str("</svg>\n");
    out
}

fn fault_lines(out: &mut String, run: &SwarmRun, end: f64, height: f64) {
    for fault in &run.faults {
        let x = x_of(fault.t_s, end);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#000\" stroke-dasharray=\"4 3\"><title>{}</title></line>",
            height - BOTTOM,
            escape(&fault.what)
        );
    }
}
