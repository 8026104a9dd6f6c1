//! A hand-written SVG chart of the bench's figures: panels of grouped bars,
//! one above the other, with a title, axis labels, the value on every bar, a
//! legend and optional dashed reference lines.

use std::fmt::Write;

/// One kind of bar (a colour in the legend).
pub struct Series {
    pub name: String,
    pub color: &'static str,
}

/// Bars side by side under one label; `values[i]` belongs to series `i`.
/// Missing values get no bar (the others close up); a group with none shows
/// `note` (or "no figure") instead.
pub struct Group {
    pub label: String,
    pub values: Vec<Option<f64>>,
    pub note: Option<String>,
}

/// A dashed horizontal line at `value`, labelled at the right end.
pub struct RefLine {
    pub label: String,
    pub value: f64,
    pub color: &'static str,
}

pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub groups: Vec<Group>,
    pub refs: Vec<RefLine>,
    /// Decimals of the values printed on the bars.
    pub decimals: usize,
}

const LEFT: f64 = 84.0;
const RIGHT: f64 = 24.0;
const MIN_WIDTH: f64 = 760.0;
const PLOT_H: f64 = 220.0;
/// Panel title and legend above the plot.
const HEAD_H: f64 = 50.0;
/// Group labels (up to 3 lines) below the plot.
const FOOT_H: f64 = 52.0;
const PANEL_GAP: f64 = 18.0;
const MAX_BAR_W: f64 = 44.0;
/// Rough width of a character of the 11 px sans-serif labels.
const CHAR_W: f64 = 6.2;

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Words of `s` in lines of at most `width` characters (a longer word gets
/// a line of its own), at most `max` lines, the last one cut with "…".
fn wrap(s: &str, width: usize, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in s.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    if lines.len() > max {
        lines.truncate(max);
        if let Some(l) = lines.last_mut() {
            l.push('…');
        }
    }
    lines
}

/// A round axis step giving about `ticks` intervals up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_num(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

/// Width of a group: room for its bars and a readable label.
fn group_width(p: &Panel) -> f64 {
    let bars = p
        .groups
        .iter()
        .map(|g| g.values.iter().flatten().count())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    (bars * MAX_BAR_W + 24.0).max(130.0)
}

fn panel_height(p: &Panel) -> f64 {
    HEAD_H + PLOT_H + FOOT_H + if p.refs.is_empty() { 0.0 } else { 4.0 }
}

/// The whole chart: `title`, `notes` under it (one line each), the panels.
pub fn render(title: &str, notes: &[String], panels: &[Panel]) -> String {
    let width = panels
        .iter()
        .map(|p| LEFT + RIGHT + p.groups.len().max(1) as f64 * group_width(p))
        .fold(MIN_WIDTH, f64::max)
        .ceil();
    let head = 34.0 + notes.len() as f64 * 16.0 + 8.0;
    let height = (head
        + panels
            .iter()
            .map(|p| panel_height(p) + PANEL_GAP)
            .sum::<f64>()
        + 8.0)
        .ceil();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(s, "<title>{}</title>", esc(title));
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="17" font-weight="bold" text-anchor="middle">{}</text>"#,
        width / 2.0,
        esc(title)
    );
    for (i, n) in notes.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-size="11" fill="#444" text-anchor="middle">{}</text>"##,
            width / 2.0,
            44.0 + i as f64 * 16.0,
            esc(n)
        );
    }
    let mut y = head;
    for p in panels {
        panel(&mut s, p, y, width);
        y += panel_height(p) + PANEL_GAP;
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, p: &Panel, top: f64, width: f64) {
    let plot_w = width - LEFT - RIGHT;
    let plot_top = top + HEAD_H;
    let plot_bottom = plot_top + PLOT_H;
    let _ = writeln!(s, "<g>");
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 16.0,
        esc(&p.title)
    );
    // Legend: one row under the title.
    let mut lx = LEFT;
    for se in &p.series {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            top + 26.0,
            se.color,
            lx + 16.0,
            top + 36.0,
            esc(&se.name)
        );
        lx += 16.0 + se.name.chars().count() as f64 * CHAR_W + 18.0;
    }
    for r in &p.refs {
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2" stroke-dasharray="6 4"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            lx + 22.0,
            r.color,
            lx + 26.0,
            top + 36.0,
            esc(&r.label),
            y = top + 32.0,
        );
        lx += 26.0 + r.label.chars().count() as f64 * CHAR_W + 18.0;
    }

    // Scale: values, reference lines and room for the value labels.
    let max = p
        .groups
        .iter()
        .flat_map(|g| g.values.iter().flatten().copied())
        .chain(p.refs.iter().map(|r| r.value))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let step = nice_step(if max > 0.0 { max * 1.12 } else { 1.0 }, 5.0);
    let top_v = (((max * 1.12) / step).ceil() * step).max(step);
    let yof = |v: f64| plot_bottom - (v / top_v).clamp(0.0, 1.0) * PLOT_H;

    // Grid and y ticks.
    let ticks = (top_v / step).round() as usize;
    let tick_dec = if step.fract().abs() > 1e-9 { 1 } else { 0 };
    for k in 0..=ticks.min(20) {
        let v = k as f64 * step;
        let y = yof(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd" stroke-width="1"/><text x="{}" y="{:.1}" font-size="10" fill="#444" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 3.5,
            fmt_num(v, tick_dec)
        );
    }
    // Axes.
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{plot_top}" x2="{LEFT}" y2="{plot_bottom}" stroke="#333"/><line x1="{LEFT}" y1="{plot_bottom}" x2="{}" y2="{plot_bottom}" stroke="#333"/>"##,
        LEFT + plot_w
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate({},{}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"#,
        LEFT - 52.0,
        plot_top + PLOT_H / 2.0,
        esc(&p.y_label)
    );

    // Bars; their values are written last, over the reference lines.
    let mut values = String::new();
    let gw = plot_w / p.groups.len().max(1) as f64;
    for (gi, g) in p.groups.iter().enumerate() {
        let gx = LEFT + gi as f64 * gw;
        let bars: Vec<(usize, f64)> = g
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|x| x.is_finite()).map(|x| (i, x)))
            .collect();
        let bw = ((gw - 24.0) / bars.len().max(1) as f64).min(MAX_BAR_W);
        let x0 = gx + (gw - bw * bars.len() as f64) / 2.0;
        for (k, (si, v)) in bars.iter().enumerate() {
            let x = x0 + k as f64 * bw;
            let y = yof(*v);
            let color = p.series.get(*si).map_or("#999", |se| se.color);
            let name = p.series.get(*si).map_or("", |se| se.name.as_str());
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {} {}</title></rect>"#,
                x + 1.0,
                bw - 2.0,
                (plot_bottom - y).max(0.0),
                esc(&g.label),
                esc(name),
                fmt_num(*v, p.decimals)
            );
            let _ = writeln!(
                values,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
                x + bw / 2.0,
                y - 3.0,
                fmt_num(*v, p.decimals)
            );
        }
        if bars.is_empty() {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#a00" text-anchor="middle">{}</text>"##,
                gx + gw / 2.0,
                plot_bottom - 6.0,
                esc(g.note.as_deref().unwrap_or("no figure"))
            );
        }
        let chars = ((gw - 8.0) / CHAR_W).floor().max(6.0) as usize;
        for (li, line) in wrap(&g.label, chars, 3).iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                gx + gw / 2.0,
                plot_bottom + 16.0 + li as f64 * 14.0,
                esc(line)
            );
        }
    }
    // Reference lines over the bars.
    for r in &p.refs {
        let y = yof(r.value);
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
            LEFT + plot_w,
            r.color
        );
    }
    s.push_str(&values);
    let _ = writeln!(s, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_escapes() {
        assert_eq!(
            wrap("ours > shoes server", 8, 3),
            ["ours >", "shoes", "server"]
        );
        assert_eq!(wrap("a b c d", 1, 2), ["a", "b…"]);
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(nice_step(2375.0 * 1.12, 5.0), 1000.0);
        assert_eq!(nice_step(9.0, 5.0), 2.0);
    }

    #[test]
    fn renders_every_label() {
        let p = Panel {
            title: "t".into(),
            y_label: "MiB/s".into(),
            series: vec![Series {
                name: "download".into(),
                color: "#4e79a7",
            }],
            groups: vec![
                Group {
                    label: "raw TLS".into(),
                    values: vec![Some(10.0)],
                    note: None,
                },
                Group {
                    label: "x > y".into(),
                    values: vec![None],
                    note: Some("failed".into()),
                },
            ],
            refs: vec![RefLine {
                label: "target".into(),
                value: 12.0,
                color: "#d62728",
            }],
            decimals: 0,
        };
        let svg = render("title", &["note".into()], &[p]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for w in [
            "raw TLS", "x &gt; y", "failed", "download", "target", "MiB/s",
        ] {
            assert!(svg.contains(w), "{w}");
        }
    }
}
