//! Server-side SVG charts for the dashboard: no JavaScript, no external
//! resources, readable on a phone, each with a text alternative (`<title>`
//! and `<desc>`, `role="img"`). Pure functions from numbers to markup.

use std::fmt::Write;

use crate::trial::causal::{CausalGraph, EdgeKind, NodeRole};

/// Colours for arms by index (colour-blind safe, Okabe–Ito).
pub const ARM_COLOURS: [&str; 6] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
];

/// The colour of arm `i`.
pub fn arm_colour(i: usize) -> &'static str {
    ARM_COLOURS[i % ARM_COLOURS.len()]
}

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 10.0;
/// Room above the plot for the legend, so that it never covers data.
const TOP: f64 = 24.0;
const BOTTOM: f64 = 30.0;
/// Chart text size in the drawing's units: on a phone the chart keeps at
/// least `MIN_PHONE_WIDTH` px (its figure scrolls sideways instead of the
/// page), so text stays at 12 × 560 / 640 ≈ 10.5 px or more.
const FONT: f64 = 12.0;
/// About how wide a character of chart text is, for laying legends out.
const CHAR_W: f64 = 7.1;

/// A round step for about `n` ticks over `span`: 1, 2, 2.5 or 5 times a
/// power of ten, so that ticks read 2, 4, 6 rather than 2.76, 3.88.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    }
}

/// A tick's label with as many decimals as its step needs.
fn tick_at(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).clamp(0.0, 4.0) as usize;
    // 2.5-steps need one more decimal than their power of ten.
    let decimals = if ((step / 10f64.powi(-(decimals as i32))) % 1.0).abs() > 1e-9 {
        decimals + 1
    } else {
        decimals
    };
    let text = format!("{v:.decimals$}");
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        "0".to_string()
    } else {
        text
    }
}

/// Escapes text for SVG/HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    /// The round step of the value axis's ticks (`y0`, `y1` are multiples).
    y_step: f64,
    /// The whole-number step of the day axis's ticks.
    x_step: f64,
}

impl Frame {
    fn new(xs: impl Iterator<Item = f64> + Clone, ys: impl Iterator<Item = f64> + Clone) -> Frame {
        let (mut x0, mut x1) = xs
            .clone()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let (mut y0, mut y1) = ys
            .clone()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        if !(x0.is_finite() && x1.is_finite()) {
            x0 = 0.0;
            x1 = 1.0;
        } else if x1 <= x0 {
            // One x only (a single fit): centre it rather than push it off the plot.
            x0 -= 1.0;
            x1 += 1.0;
        }
        if !(y0.is_finite() && y1.is_finite()) {
            y0 = 0.0;
            y1 = 1.0;
        }
        if y1 - y0 < 1e-9 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        // Days are whole: the axis runs from a whole day to a whole day.
        if x1 - x0 >= 2.0 {
            x0 = x0.floor();
            x1 = x1.ceil();
        }
        // Days tick in whole days or weeks.
        let x_step = [1.0, 2.0, 7.0, 14.0, 28.0, 56.0, 91.0, 182.0, 364.0]
            .into_iter()
            .find(|s| *s >= (x1 - x0) / 7.0)
            .unwrap_or(((x1 - x0) / 7.0).ceil().max(1.0));
        let y_step = nice_step(y1 - y0, 4.0);
        Frame {
            x0,
            x1,
            y0: (y0 / y_step).floor() * y_step,
            y1: (y1 / y_step).ceil() * y_step,
            y_step,
            x_step,
        }
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        TOP + (self.y1 - v) / (self.y1 - self.y0) * (H - TOP - BOTTOM)
    }
}

fn open(out: &mut String, title: &str, desc: &str) {
    // Ids unique on a page with several charts: a hash of the title.
    let id = title.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) % 1_000_000_007;
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-labelledby="t{id} d{id}" class="chart" style="max-width:{W}px;height:auto;font:{FONT}px system-ui,sans-serif"><title id="t{id}">{}</title><desc id="d{id}">{}</desc>"#,
        escape(title),
        escape(desc)
    );
}

/// One named line of [`lines_chart`].
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend text.
    pub name: String,
    /// Stroke colour.
    pub colour: &'static str,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed, so that two lines differ in more than colour.
    pub dashed: bool,
}

/// Several lines over one x axis with a legend: the counterfactual
/// trajectories "always arm j", or probabilities over the fits (then
/// `y_span` keeps the axis at 0 to 1). `refs`: dashed reference lines
/// (`(value, label)`, e.g. the decision thresholds), named in the text
/// alternative too.
pub fn lines_chart(
    title: &str,
    AxisTitles {
        x: x_label,
        y: y_label,
    }: AxisTitles<'_>,
    series: &[Line],
    refs: &[(f64, &str)],
    y_span: Option<(f64, f64)>,
) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let span = y_span.into_iter().flat_map(|(a, b)| [a, b]);
    let f = Frame::new(
        all().map(|p| p.0),
        all()
            .map(|p| p.1)
            .chain(refs.iter().map(|r| r.0))
            .chain(span),
    );
    let mut out = String::new();
    let mut desc = series
        .iter()
        .map(|l| match l.points.last() {
            Some(p) => format!("{}: ends at {}", l.name, tick(p.1)),
            None => format!("{}: no data", l.name),
        })
        .collect::<Vec<_>>()
        .join("; ");
    if !refs.is_empty() {
        let named: Vec<&str> = refs.iter().map(|r| r.1).collect();
        let _ = write!(desc, "; dashed lines: {}", named.join(", "));
    }
    open(&mut out, title, &desc);
    axes(&mut out, &f, x_label, y_label);
    reference_lines(&mut out, &f, refs);
    let mut legend_x = LEFT;
    for Line {
        name,
        colour,
        points,
        dashed,
    } in series
    {
        let line: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", f.x(p.0), f.y(p.1)))
            .collect();
        let dash = if *dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        // The legend in a row above the plot, a short stroke of the line.
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/><line x1="{legend_x:.1}" y1="9" x2="{:.1}" y2="9" stroke="{colour}" stroke-width="2.5"{dash}/><text x="{:.1}" y="13" fill="#333">{}</text>"##,
            line.join(" "),
            legend_x + 16.0,
            legend_x + 19.0,
            escape(name)
        );
        legend_x += 30.0 + CHAR_W * name.chars().count() as f64;
        // A single point draws no line: mark it.
        if let [p] = points.as_slice() {
            let _ = write!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"##,
                f.x(p.0),
                f.y(p.1)
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// The axes: round value ticks with grid lines, whole-day ticks, and both
/// axis titles (the value's with its unit, written upwards).
fn axes(out: &mut String, f: &Frame, x_label: &str, y_label: &str) {
    let (yb, yt) = (f.y(f.y0), f.y(f.y1));
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{yb:.1}" x2="{:.1}" y2="{yb:.1}" stroke="#999"/><line x1="{LEFT}" y1="{yt:.1}" x2="{LEFT}" y2="{yb:.1}" stroke="#999"/>"##,
        W - RIGHT
    );
    let ticks = ((f.y1 - f.y0) / f.y_step).round() as i64;
    for k in 0..=ticks.clamp(0, 20) {
        let v = f.y0 + f.y_step * k as f64;
        let y = f.y(v);
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text><line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##,
            LEFT - 4.0,
            y + 3.5,
            tick_at(v, f.y_step),
            W - RIGHT
        );
    }
    let mid_y = (f.y(f.y0) + f.y(f.y1)) / 2.0;
    let _ = write!(
        out,
        r##"<text x="12" y="{mid_y:.1}" text-anchor="middle" fill="#555" transform="rotate(-90 12 {mid_y:.1})">{}</text>"##,
        escape(y_label)
    );
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        escape(x_label)
    );
    // Whole-day ticks at a round step, from the first multiple on.
    let mut d = (f.x0 / f.x_step).ceil() * f.x_step;
    let mut drawn = 0;
    while d <= f.x1 + 1e-9 && drawn < 20 {
        drawn += 1;
        let x = f.x(d);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{yb:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            yb + 4.0,
            yb + 14.0,
            tick_at(d, f.x_step)
        );
        d += f.x_step;
    }
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() < 1e6) {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// What shades a stretch of days on the outcome chart: the run-in (grey,
/// whatever arm it runs on, so that it never reads as the comparator's
/// data) or an arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shade {
    /// Run-in days, before the first block.
    RunIn,
    /// An arm, by its colour index.
    Arm(usize),
}

/// The run-in's colour.
pub const RUN_IN_COLOUR: &str = "#999999";

impl Shade {
    fn colour(self) -> &'static str {
        match self {
            Shade::RunIn => RUN_IN_COLOUR,
            Shade::Arm(i) => arm_colour(i),
        }
    }
}

/// The outcome over trial days, the background shaded by the arm in force
/// (the run-in grey), observations as dots and the smoothed latent level as
/// a line. `spans`: `(from day, to day, shade)`; `points`: `(day, value)`;
/// `latent`: `(day, level)`.
pub fn outcome_chart(
    title: &str,
    y_label: &str,
    spans: &[(f64, f64, Shade)],
    points: &[(f64, f64)],
    latent: &[(f64, f64)],
    arm_names: &[String],
) -> String {
    let f = Frame::new(
        spans
            .iter()
            .flat_map(|s| [s.0, s.1])
            .chain(points.iter().map(|p| p.0)),
        points.iter().map(|p| p.1).chain(latent.iter().map(|p| p.1)),
    );
    let mut out = String::new();
    let run_in = spans.iter().any(|s| s.2 == Shade::RunIn);
    let mut names: Vec<String> = arm_names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}: {}", colour_name(i)))
        .collect();
    if run_in {
        names.insert(0, "run-in: grey".to_string());
    }
    let desc = format!(
        "{} observations over days {} to {}; background colour shows the arm in force ({}); the line is the smoothed level.",
        points.len(),
        tick(f.x0),
        tick(f.x1),
        names.join(", ")
    );
    open(&mut out, title, &desc);
    for &(a, b, shade) in spans {
        let (x0, x1) = (f.x(a), f.x(b));
        let _ = write!(
            out,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.13"/>"#,
            (x1 - x0).max(0.5),
            H - TOP - BOTTOM,
            shade.colour()
        );
    }
    axes(&mut out, &f, "trial day", y_label);
    for &(t, y) in points {
        let _ = write!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="#333" fill-opacity="0.7"/>"##,
            f.x(t),
            f.y(y)
        );
    }
    if latent.len() > 1 {
        let path: Vec<String> = latent
            .iter()
            .map(|&(t, y)| format!("{:.1},{:.1}", f.x(t), f.y(y)))
            .collect();
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#111" stroke-width="1.6"/>"##,
            path.join(" ")
        );
    }
    legend(&mut out, arm_names, run_in);
    out.push_str("</svg>");
    out
}

fn colour_name(i: usize) -> &'static str {
    ["blue", "orange", "green", "pink", "sky blue", "red"][i % 6]
}

/// The arms' colours (the run-in's first, when shown) in a row above the
/// plot.
fn legend(out: &mut String, names: &[String], run_in: bool) {
    let mut x = LEFT;
    let run_in = run_in.then_some((Shade::RunIn, "run-in"));
    let arms = names
        .iter()
        .enumerate()
        .map(|(i, n)| (Shade::Arm(i), n.as_str()));
    for (shade, n) in run_in.into_iter().chain(arms) {
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="4" width="10" height="10" fill="{}" fill-opacity="0.5"/><text x="{:.1}" y="13" fill="#333">{}</text>"##,
            shade.colour(),
            x + 13.0,
            escape(n)
        );
        x += 20.0 + CHAR_W * n.chars().count() as f64;
    }
}

/// A chart's axis titles: the days' and the values' (with its unit).
#[derive(Debug, Clone, Copy)]
pub struct AxisTitles<'a> {
    /// Under the day axis.
    pub x: &'a str,
    /// Beside the value axis.
    pub y: &'a str,
}

/// A quantity over successive fits: mean with a shaded 90% band, and
/// horizontal reference lines (`(value, label)`, e.g. 0 and the MID).
/// `xs`: the fit's position (trial day of its last data).
pub fn band_chart(
    title: &str,
    AxisTitles {
        x: x_label,
        y: y_label,
    }: AxisTitles<'_>,
    xs: &[f64],
    mean: &[f64],
    lo: &[f64],
    hi: &[f64],
    refs: &[(f64, &str)],
) -> String {
    let f = Frame::new(
        xs.iter().copied(),
        lo.iter()
            .chain(hi)
            .chain(mean)
            .copied()
            .chain(refs.iter().map(|r| r.0)),
    );
    let mut out = String::new();
    let desc = match (xs.last(), mean.last(), lo.last(), hi.last()) {
        (Some(x), Some(m), Some(l), Some(h)) => format!(
            "{} fits; the latest (day {}) gives {:.2}, 90% interval {:.2} to {:.2}.",
            xs.len(),
            tick(*x),
            m,
            l,
            h
        ),
        _ => "No fits yet.".to_string(),
    };
    open(&mut out, title, &desc);
    axes(&mut out, &f, x_label, y_label);
    if xs.len() > 1 {
        let upper: Vec<String> = xs
            .iter()
            .zip(hi)
            .map(|(&x, &y)| format!("{:.1},{:.1}", f.x(x), f.y(y)))
            .collect();
        let lower: Vec<String> = xs
            .iter()
            .zip(lo)
            .rev()
            .map(|(&x, &y)| format!("{:.1},{:.1}", f.x(x), f.y(y)))
            .collect();
        let _ = write!(
            out,
            r##"<polygon points="{} {}" fill="#0072B2" fill-opacity="0.18"/>"##,
            upper.join(" "),
            lower.join(" ")
        );
        let line: Vec<String> = xs
            .iter()
            .zip(mean)
            .map(|(&x, &y)| format!("{:.1},{:.1}", f.x(x), f.y(y)))
            .collect();
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#0072B2" stroke-width="1.8"/>"##,
            line.join(" ")
        );
    }
    // Each fit as a dot with its 90% interval, so that a single fit shows too.
    for ((&x, &m), (&l, &h)) in xs.iter().zip(mean).zip(lo.iter().zip(hi)) {
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#0072B2" stroke-width="1.2"/><circle cx="{x:.1}" cy="{:.1}" r="2.5" fill="#0072B2"/>"##,
            f.y(l),
            f.y(h),
            f.y(m),
            x = f.x(x)
        );
    }
    reference_lines(&mut out, &f, refs);
    out.push_str("</svg>");
    out
}

/// Dashed horizontal lines across the plot, each labelled at its right end.
fn reference_lines(out: &mut String, f: &Frame, refs: &[(f64, &str)]) {
    for &(v, label) in refs {
        let y = f.y(v);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#D55E00" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#D55E00">{}</text>"##,
            W - RIGHT,
            W - RIGHT - 2.0,
            y - 3.0,
            escape(label)
        );
    }
}

/// Draws a hypothesis's causal graph as SVG: nodes in the graph's layers,
/// arrows solid, arrows cut by randomisation dashed and grey.
pub fn causal_graph(graph: &CausalGraph, title: &str) -> String {
    let layer = graph.layers();
    let nodes = graph.nodes();
    let layers = layer.iter().max().map_or(1, |m| m + 1);
    let (width, row) = (640.0, 90.0);
    let height = row * layers as f64 + 20.0;
    let mut pos = vec![(0.0, 0.0); nodes.len()];
    for l in 0..layers {
        let in_layer: Vec<usize> = (0..layer.len()).filter(|&i| layer[i] == l).collect();
        for (k, &i) in in_layer.iter().enumerate() {
            let x = width * (k as f64 + 0.5) / in_layer.len() as f64;
            pos[i] = (x, 40.0 + row * l as f64);
        }
    }
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" aria-labelledby="cg-title"><title id="cg-title">{}</title>
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#333"/></marker></defs>
"##,
        escape(title)
    );
    for (from, to, kind) in graph.edges() {
        let (a, b) = (pos[from], pos[to]);
        // Stop the line at the target's box edge (boxes are 18 high).
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        let shrink = if dy.abs() > 1.0 {
            (20.0 / dy.abs() * len).min(len * 0.5)
        } else {
            60.0
        };
        let (x1, y1) = (a.0 + dx / len * shrink, a.1 + dy / len * shrink);
        let (x2, y2) = (b.0 - dx / len * shrink, b.1 - dy / len * shrink);
        let style = match kind {
            EdgeKind::CutByRandomisation => {
                r##"stroke="#aaa" stroke-dasharray="5 4" marker-end="url(#arrow)""##
            }
            _ => r##"stroke="#333" stroke-width="1.5" marker-end="url(#arrow)""##,
        };
        let _ = writeln!(
            out,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" {style}/>"
        );
    }
    for (i, (name, role)) in nodes.iter().enumerate() {
        let (x, y) = pos[i];
        let fill = match role {
            NodeRole::Randomisation => "#eee",
            NodeRole::Treatment => "#d8ecff",
            NodeRole::Outcome => "#dff5e1",
            NodeRole::Confounder => "#fff2d6",
            NodeRole::Mediator => "#f0e0ff",
        };
        let w = (name.chars().count() as f64 * 7.5 + 20.0).min(width / 2.0);
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"26\" rx=\"6\" fill=\"{fill}\" stroke=\"#666\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\">{}</text>",
            x - w / 2.0,
            y - 13.0,
            y + 4.5,
            escape(name)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_graph_draws_every_node_and_cut_arrow() {
        let text = include_str!("../../protocols/caffeine-cutoff.toml");
        let p = crate::trial::protocol::Protocol::parse(text, "caffeine-cutoff.toml").unwrap();
        let g = CausalGraph::of(&p).unwrap();
        let svg = causal_graph(&g, "graph <x>");
        assert_eq!(svg.matches("<rect").count(), g.node_count());
        assert_eq!(
            svg.matches("stroke-dasharray").count(),
            g.edge_count(EdgeKind::CutByRandomisation)
        );
        assert!(g.edge_count(EdgeKind::CutByRandomisation) > 0);
        assert!(svg.contains("graph &lt;x&gt;"));
    }

    /// Ticks are round (1, 2, 2.5, 5 times a power of ten) and days whole.
    #[test]
    fn ticks_are_round_and_days_whole() {
        assert_eq!(nice_step(4.48, 4.0), 2.0);
        assert_eq!(nice_step(0.9, 4.0), 0.25);
        assert_eq!(nice_step(41.0, 6.0), 10.0);
        assert_eq!(tick_at(2.5, 0.25), "2.50");
        assert_eq!(tick_at(-0.0, 0.5), "0");
        assert_eq!(tick_at(6.0, 2.0), "6");
        let f = Frame::new([0.88, 41.88].into_iter(), [2.76, 7.24].into_iter());
        assert_eq!((f.x0, f.x1), (0.0, 42.0));
        assert_eq!((f.y0, f.y1, f.y_step), (2.0, 8.0, 2.0));
        // 42 days: weekly ticks.
        assert_eq!(f.x_step, 7.0);
        let svg = outcome_chart(
            "A",
            "anxiety (rating 0-10)",
            &[(0.0, 42.0, Shade::Arm(0))],
            &[(0.9, 2.76), (41.9, 7.24)],
            &[],
            &["none".into()],
        );
        for label in [
            ">2<",
            ">4<",
            ">6<",
            ">8<",
            ">0<",
            ">7<",
            ">42<",
            "anxiety (rating 0-10)",
        ] {
            assert!(svg.contains(label), "{label} in {svg}");
        }
        assert!(!svg.contains(">2.76<") && !svg.contains(">41.88<"));
    }

    #[test]
    fn charts_are_well_formed_and_described() {
        let names = vec!["None".to_string(), "Med <x>".to_string()];
        let svg = outcome_chart(
            "Anxiety",
            "rating 0-10",
            &[
                (0.0, 3.0, Shade::RunIn),
                (3.0, 7.0, Shade::Arm(0)),
                (7.0, 14.0, Shade::Arm(1)),
            ],
            &[(0.8, 5.0), (8.8, 3.0)],
            &[(0.8, 4.9), (8.8, 3.2)],
            &names,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(">Anxiety</title>"));
        assert!(svg.contains("2 observations over days 0 to 14"));
        // The run-in is grey, named in the legend and the text alternative,
        // and not the comparator's colour.
        assert!(svg.contains("(run-in: grey, None: blue, Med &lt;x&gt;: orange)"));
        assert!(svg.contains(&format!("fill=\"{RUN_IN_COLOUR}\" fill-opacity=\"0.13\"")));
        assert!(svg.contains(">run-in</text>"));
        assert_eq!(
            svg.matches(&format!("fill=\"{}\" fill-opacity=\"0.13\"", arm_colour(0)))
                .count(),
            1
        );
        assert!(svg.contains("Med &lt;x&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
        let band = band_chart(
            "Effect",
            AxisTitles {
                x: "day",
                y: "points",
            },
            &[20.0, 27.0],
            &[-1.0, -1.2],
            &[-2.0, -2.0],
            &[0.0, -0.4],
            &[(0.0, "0"), (-1.0, "MID")],
        );
        assert!(band.contains("<polygon"));
        assert!(band.contains("latest (day 27) gives -1.20, 90% interval -2.00 to -0.40"));
        assert_eq!(band.matches("<circle").count(), 2);
        // A single fit is drawn inside the plot, with its interval.
        let one = band_chart(
            "E1",
            AxisTitles {
                x: "day",
                y: "points",
            },
            &[43.0],
            &[-1.0],
            &[-2.0],
            &[0.0],
            &[],
        );
        assert_eq!(one.matches("<circle").count(), 1);
        assert!(
            one.contains(&format!("cx=\"{:.1}\"", (LEFT + W - RIGHT) / 2.0)),
            "{one}"
        );
        // Probabilities as two lines on a 0-to-1 axis, the thresholds
        // dashed, all in the text alternative; a single fit is a dot.
        let probability = |xs: &[f64]| {
            lines_chart(
                "P",
                AxisTitles {
                    x: "day",
                    y: "probability",
                },
                &[
                    Line {
                        name: "P(better by MID)".into(),
                        colour: arm_colour(0),
                        points: xs.iter().map(|&x| (x, 0.4)).collect(),
                        dashed: false,
                    },
                    Line {
                        name: "P(best)".into(),
                        colour: arm_colour(1),
                        points: xs.iter().map(|&x| (x, 0.7)).collect(),
                        dashed: true,
                    },
                ],
                &[(0.95, "efficacy 0.95"), (0.05, "futility 0.05")],
                Some((0.0, 1.0)),
            )
        };
        let p = probability(&[10.0, 17.0]);
        assert_eq!(p.matches("<polyline").count(), 2);
        assert!(!p.contains("<polygon") && !p.contains("interval"));
        assert!(p.contains("P(better by MID): ends at 0.40; P(best): ends at 0.70; dashed lines: efficacy 0.95, futility 0.05"));
        assert!(p.contains(">0<") && p.contains(">1.00<"), "{p}");
        assert_eq!(probability(&[10.0]).matches("<circle").count(), 2);
        // Degenerate input still draws.
        assert!(
            band_chart(
                "E",
                AxisTitles {
                    x: "day",
                    y: "points"
                },
                &[],
                &[],
                &[],
                &[],
                &[]
            )
            .contains("No fits yet")
        );
    }
}
