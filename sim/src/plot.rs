//! Hand-written inline SVG charts for `report.html`: a [`LineChart`] (one polyline per
//! [`Series`]) and a horizontal [`BarChart`], each with axes, "nice" ticks, gridlines, a
//! title and a legend. No JavaScript and no external assets: the SVG text is embedded in
//! the page as is. Every piece of text goes through [`escape`]; non-finite values are
//! skipped (a line breaks at them, a bar is left out and labelled `n/a`).

use std::fmt::Write as _;

/// Width of every chart in SVG user units (pixels at 100% zoom).
const WIDTH: f64 = 960.0;
/// Estimated width of one character of the 11px labels.
const CHAR_W: f64 = 6.6;
/// Height of one legend entry.
const LEGEND_ROW: f64 = 18.0;
/// Series with more points than this are drawn without point markers.
const MAX_MARKERS: usize = 60;

/// One line of a [`LineChart`].
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points in drawing order; non-finite points break the line.
    pub points: Vec<(f64, f64)>,
    /// CSS colour, e.g. `#4c78a8`.
    pub color: String,
    /// Draw dashed and thicker (to single out e.g. adversarial clients).
    pub emphasised: bool,
}

/// A line chart of one or more series over a shared x axis.
#[derive(Clone, Debug, Default)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Only integer x ticks (e.g. rounds).
    pub integer_x: bool,
    pub series: Vec<Series>,
}

/// One bar of a [`BarChart`].
#[derive(Clone, Debug)]
pub struct Bar {
    /// Text left of the bar.
    pub label: String,
    /// Signed length; a non-finite value draws no bar and prints `n/a`.
    pub value: f64,
    /// CSS colour.
    pub color: String,
}

/// A horizontal bar chart (bars grow left or right from zero), bars in the given order,
/// each with its value printed at its end.
#[derive(Clone, Debug, Default)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub bars: Vec<Bar>,
    /// `(text, colour)` entries shown under the title.
    pub legend: Vec<(String, String)>,
}

/// Escapes `&`, `<`, `>`, `"` and `'` so `text` is safe in XML/HTML text and attributes.
pub fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

/// Round tick values covering `[lo, hi]` with about `target` steps (steps of 1, 2 or 5
/// times a power of ten; at least `min_step`); the first and last tick bound the axis.
/// Falls back to `[lo, hi]` for non-finite or degenerate input.
pub fn ticks(lo: f64, hi: f64, target: usize, min_step: f64) -> Vec<f64> {
    let span = hi - lo;
    if !span.is_finite() || span <= 0.0 || target == 0 {
        return vec![lo, hi];
    }
    let raw = span / target as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = match raw / magnitude {
        n if n <= 1.0 => magnitude,
        n if n <= 2.0 => 2.0 * magnitude,
        n if n <= 5.0 => 5.0 * magnitude,
        _ => 10.0 * magnitude,
    }
    .max(min_step);
    let (first, last) = ((lo / step).floor(), (hi / step).ceil());
    let count = last - first;
    if !step.is_finite() || !(0.0..=200.0).contains(&count) {
        return vec![lo, hi];
    }
    // Multiplying (not accumulating) keeps ticks like 0.30000000000000004 away.
    (0..=count as usize)
        .map(|i| (first + i as f64) * step)
        .collect()
}

/// `v` with just enough decimals for ticks `step` apart.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step.is_finite() {
        (-step.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        3
    };
    let text = format!("{v:.decimals$}");
    // "-0.0" reads as a bug on an axis.
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_string()
    } else {
        text
    }
}

/// Smallest and largest finite value, widened when they are equal; `None` if none.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return Some((lo - pad, hi + pad));
    }
    Some((lo, hi))
}

/// Linear map from the data interval `[d0, d1]` to the pixel interval `[r0, r1]`.
struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)
    }
}

/// An axis: its ticks and the scale they bound.
fn axis(lo: f64, hi: f64, target: usize, min_step: f64, r0: f64, r1: f64) -> (Vec<f64>, Scale) {
    let ticks = ticks(lo, hi, target, min_step);
    let d0 = ticks.first().copied().unwrap_or(lo);
    let d1 = ticks.last().copied().unwrap_or(hi);
    (ticks, Scale { d0, d1, r0, r1 })
}

fn step_of(ticks: &[f64]) -> f64 {
    match ticks {
        [a, b, ..] => b - a,
        _ => 1.0,
    }
}

/// `<svg ...>` with a title; the caller closes it.
fn open_svg(s: &mut String, height: f64, title: &str) {
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{t}"><title>{t}</title><rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/><text x="12" y="22" class="title">{t}</text>"##,
        t = escape(title)
    );
}

/// A "no data" placeholder chart.
fn empty_svg(title: &str, note: &str) -> String {
    let mut s = String::new();
    open_svg(&mut s, 80.0, title);
    let _ = write!(
        s,
        r#"<text x="12" y="56" class="note">{}</text></svg>"#,
        escape(note)
    );
    s
}

/// Truncates `text` to `max` characters with an ellipsis.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

impl LineChart {
    /// The chart as one `<svg>` element.
    pub fn svg(&self) -> String {
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let finite = || points().filter(|(x, y)| x.is_finite() && y.is_finite());
        let (Some((x_lo, x_hi)), Some((y_lo, y_hi))) =
            (extent(finite().map(|p| p.0)), extent(finite().map(|p| p.1)))
        else {
            return empty_svg(&self.title, "no data");
        };
        let legend_w = self
            .series
            .iter()
            .map(|s| truncate(&s.label, 28).chars().count() as f64 * CHAR_W + 34.0)
            .fold(0.0, f64::max);
        let (left, right, top, bottom) = (70.0, WIDTH - legend_w - 16.0, 40.0, 50.0);
        let plot_h = 240f64.max(self.series.len() as f64 * LEGEND_ROW);
        let height = top + plot_h + bottom;
        let min_x_step = if self.integer_x { 1.0 } else { 0.0 };
        let (x_ticks, xs) = axis(x_lo, x_hi, 10, min_x_step, left, right);
        let (y_ticks, ys) = axis(y_lo, y_hi, 6, 0.0, top + plot_h, top);

        let mut s = String::new();
        open_svg(&mut s, height, &self.title);
        let (x_step, y_step) = (step_of(&x_ticks), step_of(&y_ticks));
        for &t in &y_ticks {
            let y = ys.at(t);
            let class = if t == 0.0 { "zero" } else { "grid" };
            let _ = write!(
                s,
                r#"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" class="{class}"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
                left - 6.0,
                y + 4.0,
                tick_label(t, y_step)
            );
        }
        for &t in &x_ticks {
            let x = xs.at(t);
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" class="axis"/><text x="{x:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
                top + plot_h,
                top + plot_h + 5.0,
                top + plot_h + 18.0,
                tick_label(t, x_step)
            );
        }
        let _ = write!(
            s,
            r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{b}" class="axis"/><line x1="{left}" y1="{b}" x2="{right}" y2="{b}" class="axis"/>"#,
            b = top + plot_h
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">{}</text><text x="16" y="{:.1}" class="label" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            (left + right) / 2.0,
            height - 10.0,
            escape(&self.x_label),
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            escape(&self.y_label)
        );
        for series in &self.series {
            s.push_str(&series_svg(series, &xs, &ys));
        }
        for (i, series) in self.series.iter().enumerate() {
            let y = top + 6.0 + i as f64 * LEGEND_ROW;
            let x = right + 14.0;
            let _ = write!(
                s,
                r#"<line x1="{x}" y1="{y}" x2="{:.1}" y2="{y}" stroke="{c}" class="{}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
                x + 22.0,
                if series.emphasised { "line em" } else { "line" },
                x + 28.0,
                y + 4.0,
                escape(&truncate(&series.label, 28)),
                c = escape(&series.color)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// One series as a path (broken at non-finite points) plus point markers.
fn series_svg(series: &Series, xs: &Scale, ys: &Scale) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    let mut markers = String::new();
    let color = escape(&series.color);
    let mark = series.points.len() <= MAX_MARKERS;
    for &(x, y) in &series.points {
        if !(x.is_finite() && y.is_finite()) {
            pen_down = false;
            continue;
        }
        let (px, py) = (xs.at(x), ys.at(y));
        let _ = write!(d, "{}{px:.1} {py:.1} ", if pen_down { 'L' } else { 'M' });
        pen_down = true;
        if mark {
            let _ = write!(
                markers,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="2.5" fill="{color}"/>"#
            );
        }
    }
    if d.is_empty() {
        return String::new();
    }
    format!(
        r#"<g><title>{}</title><path d="{}" stroke="{color}" class="{}"/>{markers}</g>"#,
        escape(&series.label),
        d.trim_end(),
        if series.emphasised { "line em" } else { "line" },
    )
}

impl BarChart {
    /// The chart as one `<svg>` element.
    pub fn svg(&self) -> String {
        let Some((lo, hi)) = extent(
            self.bars
                .iter()
                .map(|b| b.value)
                .chain(std::iter::once(0.0)),
        ) else {
            return empty_svg(&self.title, "no data");
        };
        let label_w = self
            .bars
            .iter()
            .map(|b| truncate(&b.label, 30).chars().count() as f64 * CHAR_W)
            .fold(40.0, f64::max);
        let legend_h = if self.legend.is_empty() { 0.0 } else { 24.0 };
        // Room for the printed values beside the bars' ends.
        let value_room = 70.0;
        let left = 16.0 + label_w + if lo < 0.0 { value_room } else { 8.0 };
        let right = WIDTH - if hi > 0.0 { value_room } else { 20.0 };
        let (top, row, bottom) = (40.0 + legend_h, 22.0, 48.0);
        let plot_h = row * self.bars.len().max(1) as f64;
        let height = top + plot_h + bottom;
        let (ticks, xs) = axis(lo, hi, 8, 0.0, left, right);
        let step = step_of(&ticks);

        let mut s = String::new();
        open_svg(&mut s, height, &self.title);
        let mut x = 12.0;
        for (text, color) in &self.legend {
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="36" width="12" height="12" fill="{}"/><text x="{:.1}" y="46" class="legend">{}</text>"#,
                escape(color),
                x + 16.0,
                escape(text)
            );
            x += 16.0 + text.chars().count() as f64 * CHAR_W + 18.0;
        }
        for &t in &ticks {
            let px = xs.at(t);
            let class = if t == 0.0 { "zero" } else { "grid" };
            let _ = write!(
                s,
                r#"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" class="{class}"/><text x="{px:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
                top + plot_h,
                top + plot_h + 16.0,
                tick_label(t, step)
            );
        }
        let zero = xs.at(0.0);
        for (i, bar) in self.bars.iter().enumerate() {
            let y = top + i as f64 * row;
            let _ = write!(
                s,
                r#"<text x="12" y="{:.1}" class="tick">{}</text>"#,
                y + row / 2.0 + 4.0,
                escape(&truncate(&bar.label, 30))
            );
            if !bar.value.is_finite() {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" class="value">n/a</text>"#,
                    zero + 4.0,
                    y + row / 2.0 + 4.0
                );
                continue;
            }
            let end = xs.at(bar.value);
            let (x0, w) = (zero.min(end), (end - zero).abs());
            let (tx, anchor) = if bar.value < 0.0 {
                (x0 - 4.0, "end")
            } else {
                (x0 + w + 4.0, "start")
            };
            let _ = write!(
                s,
                r#"<rect class="bar" x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect><text x="{tx:.1}" y="{:.1}" class="value" text-anchor="{anchor}">{:.4}</text>"#,
                y + 3.0,
                row - 6.0,
                escape(&bar.color),
                escape(&bar.label),
                bar.value,
                y + row / 2.0 + 4.0,
                bar.value
            );
        }
        let _ = write!(
            s,
            r#"<line x1="{left:.1}" y1="{b:.1}" x2="{right:.1}" y2="{b:.1}" class="axis"/><text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">{}</text></svg>"#,
            (left + right) / 2.0,
            height - 10.0,
            escape(&self.x_label),
            b = top + plot_h
        );
        s
    }
}

/// The `<style>` rules the charts' classes refer to (to put in the page's `<head>`).
pub const CHART_CSS: &str = "svg.chart{max-width:100%;height:auto;display:block;margin:8px 0 20px}\
svg.chart text{font-family:system-ui,sans-serif;fill:#222}\
svg.chart .title{font-size:15px;font-weight:600}\
svg.chart .tick,svg.chart .legend,svg.chart .value{font-size:11px}\
svg.chart .label{font-size:12px;fill:#444}\
svg.chart .note{font-size:13px;fill:#666}\
svg.chart .grid{stroke:#e4e4e4;stroke-width:1}\
svg.chart .zero{stroke:#555;stroke-width:1.2}\
svg.chart .axis{stroke:#333;stroke-width:1}\
svg.chart .line{fill:none;stroke-width:1.6}\
svg.chart .line.em{stroke-width:2.6;stroke-dasharray:6 3}";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Panics unless every tag in `xml` is closed in order and every `&` starts an
    /// entity `escape` writes (comments, `<!DOCTYPE>` and `<?...?>` are skipped).
    pub(crate) fn assert_well_formed(xml: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = xml;
        while let Some(i) = rest.find('<') {
            let after = &rest[i + 1..];
            let end = after.find('>').expect("a '<' without '>'");
            let tag = &after[..end];
            rest = &after[end + 1..];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            if tag.starts_with('!') || tag.starts_with('?') || tag.ends_with('/') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
            } else {
                stack.push(tag.split_whitespace().next().expect("tag name"));
            }
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
        for (i, _) in xml.match_indices('&') {
            let tail = &xml[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                    .iter()
                    .any(|e| tail.starts_with(e)),
                "raw '&' at {i}: {}",
                &tail[..tail.len().min(20)]
            );
        }
    }

    fn series(label: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            color: "#123456".into(),
            emphasised: false,
        }
    }

    #[test]
    fn escape_replaces_every_markup_character() {
        assert_eq!(escape(r#"a<&>"'b"#), "a&lt;&amp;&gt;&quot;&#39;b");
        assert_eq!(escape("plain ü"), "plain ü");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let close = |got: Vec<f64>, want: &[f64]| {
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
            }
        };
        close(ticks(0.0, 1.0, 5, 0.0), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        close(
            ticks(1.0, 20.0, 10, 1.0),
            &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0],
        );
        // Integer axes never get fractional steps.
        close(ticks(1.0, 3.0, 10, 1.0), &[1.0, 2.0, 3.0]);
        close(ticks(-0.13, 0.02, 4, 0.0), &[-0.15, -0.1, -0.05, 0.0, 0.05]);
        assert_eq!(ticks(1.0, 1.0, 5, 0.0), vec![1.0, 1.0]);
        assert_eq!(ticks(0.0, f64::INFINITY, 5, 0.0).len(), 2);
        assert_eq!(tick_label(-0.0, 0.05), "0.00");
        assert_eq!(tick_label(0.15, 0.05), "0.15");
    }

    #[test]
    fn line_chart_draws_one_marker_per_finite_point() {
        let chart = LineChart {
            title: "accuracy".into(),
            x_label: "round".into(),
            y_label: "acc".into(),
            integer_x: true,
            series: vec![
                series("a", vec![(1.0, 0.5), (2.0, 0.6), (3.0, 0.7)]),
                series("b", vec![(1.0, 0.1), (2.0, 0.2)]),
            ],
        };
        let svg = chart.svg();
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert_eq!(svg.matches("<path").count(), 2);
        // Legend entries for both series.
        assert!(svg.contains(">a</text>") && svg.contains(">b</text>"));
    }

    #[test]
    fn non_finite_points_are_skipped_and_break_the_line() {
        let chart = LineChart {
            series: vec![series(
                "gappy",
                vec![
                    (1.0, 0.5),
                    (2.0, f64::NAN),
                    (3.0, 0.7),
                    (f64::INFINITY, 0.1),
                ],
            )],
            ..LineChart::default()
        };
        let svg = chart.svg();
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        // Two separate segments: two move-to commands in the one path.
        let d = svg
            .split(r#" d=""#)
            .nth(1)
            .and_then(|t| t.split('"').next());
        assert_eq!(d.expect("a path").matches('M').count(), 2);
        let empty = LineChart {
            title: "nothing".into(),
            series: vec![series("nan", vec![(1.0, f64::NAN)])],
            ..LineChart::default()
        }
        .svg();
        assert_well_formed(&empty);
        assert!(empty.contains("no data"));
        assert!(!empty.contains("<path"));
    }

    #[test]
    fn bar_chart_draws_one_bar_per_finite_value_with_escaped_labels() {
        let bar = |label: &str, value: f64| Bar {
            label: label.into(),
            value,
            color: "#abcdef".into(),
        };
        let chart = BarChart {
            title: "values <of> clients & more".into(),
            x_label: "shapley".into(),
            bars: vec![bar("x<&>y", 0.25), bar("neg", -0.1), bar("nan", f64::NAN)],
            legend: vec![("honest".into(), "#abcdef".into())],
        };
        let svg = chart.svg();
        assert_well_formed(&svg);
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 2);
        assert!(svg.contains("x&lt;&amp;&gt;y"));
        assert!(!svg.contains("x<&>y"));
        assert!(svg.contains("values &lt;of&gt; clients &amp; more"));
        assert!(svg.contains(">0.2500</text>") && svg.contains(">-0.1000</text>"));
        assert!(svg.contains(">n/a</text>"));
        let none = BarChart::default().svg();
        assert_well_formed(&none);
        assert_eq!(none.matches(r#"<rect class="bar""#).count(), 0);
    }
}
