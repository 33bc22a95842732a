//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` once per
//! metric family, then its samples, one per line (`name{label="value",...} value`).
//!
//! Escaping follows the format: in HELP text `\` and line feed become `\\` and `\n`; in label
//! values `\`, `"` and line feed become `\\`, `\"` and `\n`. Histograms are written as
//! cumulative `_bucket{le="..."}` series ending in `le="+Inf"`, then `_sum` and `_count`;
//! durations are in seconds, as Prometheus' naming conventions ask (`*_seconds`).

use std::fmt::Write;

use crate::metric::HistogramSnapshot;

/// The `# TYPE` of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The media type of the format, for the HTTP `Content-Type` header.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

fn valid_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Escapes a HELP docstring (`\` and line feed).
pub fn escape_help(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes a label value (`\`, `"` and line feed).
pub fn escape_label_value(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its HELP and TYPE lines. Its samples must follow before the next
    /// family starts. Names are the program's own constants (checked in debug builds).
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        debug_assert!(valid_name(name, true), "metric name {name:?}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(help, &mut self.out);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
        self
    }

    fn labels(&mut self, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
        if labels.is_empty() && extra.is_none() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().chain(extra.iter()).enumerate() {
            debug_assert!(valid_name(k, false) && !k.starts_with("__"), "label {k:?}");
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_value(v, &mut self.out);
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// One sample with an integer value.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<i128>) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", value.into());
    }

    /// One sample with a floating-point value.
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.out.push(' ');
        push_f64(&mut self.out, value);
        self.out.push('\n');
    }

    /// A histogram's series (`name` without suffix), bounds and sum in seconds.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let mut le = String::new();
        for (i, &count) in h.cumulative.iter().enumerate() {
            le.clear();
            match h.bounds_ns.get(i) {
                Some(&ns) => push_f64(&mut le, ns as f64 / 1e9),
                None => le.push_str("+Inf"),
            }
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(("le", &le)));
            let _ = writeln!(self.out, " {count}");
        }
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.labels(labels, None);
        self.out.push(' ');
        push_f64(&mut self.out, h.sum_ns as f64 / 1e9);
        self.out.push('\n');
        self.out.push_str(name);
        self.out.push_str("_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.count());
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Go's ParseFloat accepts Rust's shortest round-trip formatting; infinities and NaN are
/// spelled as the format wants.
fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Histogram;

    #[test]
    fn escapes_help_and_label_values() {
        let mut e = Exposition::new();
        e.family("x_total", "a \\ b\nc \"q\"", Kind::Counter);
        e.sample("x_total", &[("share", "a\"b\\c\nd")], 3u64);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP x_total a \\\\ b\\nc \"q\"\n# TYPE x_total counter\nx_total{share=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn histogram_series() {
        static B: &[u64] = &[10_000, 2_500_000_000];
        let h = Histogram::new(B);
        h.observe_ns(1_000);
        h.observe_ns(3_000_000_000);
        let mut e = Exposition::new();
        e.family("d_seconds", "d", Kind::Histogram);
        e.histogram("d_seconds", &[("command", "READ")], &h.snapshot());
        assert_eq!(
            e.finish(),
            "# HELP d_seconds d\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{command=\"READ\",le=\"0.00001\"} 1\n\
             d_seconds_bucket{command=\"READ\",le=\"2.5\"} 1\n\
             d_seconds_bucket{command=\"READ\",le=\"+Inf\"} 2\n\
             d_seconds_sum{command=\"READ\"} 3.000001\n\
             d_seconds_count{command=\"READ\"} 2\n"
        );
    }
}
