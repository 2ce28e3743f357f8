//! Metrics in Prometheus' text format (version 0.0.4), grouped by family: whatever order the
//! parts of a service add their samples in, each name gets one `# HELP` and one `# TYPE` line
//! followed by all of its samples, which is what `promtool check metrics` asks.

use std::fmt::Write;

/// A metric's type in the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (its name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

#[derive(Debug)]
struct Family {
    name: String,
    kind: MetricKind,
    help: String,
    samples: String,
}

/// A Prometheus text exposition being built. Add samples with [`counter`](Self::counter) and
/// [`gauge`](Self::gauge) (or a whole source, [`StatusSnapshot::render`](crate::StatusSnapshot::render)), then take the text with
/// [`finish`](Self::finish).
///
/// ```
/// use nearcache_source::Exposition;
/// let mut out = Exposition::new();
/// out.gauge("app_workers", "Workers running.", &[("pool", "a")], 3.0);
/// out.counter("app_jobs_total", "Jobs done.", &[], 10.0);
/// out.gauge("app_workers", "Workers running.", &[("pool", "b\"x")], 0.5);
/// let text = out.finish();
/// let lines: Vec<&str> = text.lines().collect();
/// assert_eq!(lines, [
///     "# HELP app_workers Workers running.",
///     "# TYPE app_workers gauge",
///     "app_workers{pool=\"a\"} 3",
///     "app_workers{pool=\"b\\\"x\"} 0.5",
///     "# HELP app_jobs_total Jobs done.",
///     "# TYPE app_jobs_total counter",
///     "app_jobs_total 10",
/// ]);
/// ```
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// The `Content-Type` of the text [`finish`](Self::finish) returns.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample of the counter `name` (which should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, MetricKind::Counter, help, labels, value);
    }

    /// Adds a sample of the gauge `name`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, MetricKind::Gauge, help, labels, value);
    }

    /// Adds a sample of `name`; the first sample of a name sets its type and help text.
    pub fn sample(
        &mut self,
        name: &str,
        kind: MetricKind,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    kind,
                    help: help.replace('\\', "\\\\").replace('\n', "\\n"),
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        let out = &mut self.families[at].samples;
        out.push_str(name);
        for (i, (label, v)) in labels.iter().enumerate() {
            out.push(if i == 0 { '{' } else { ',' });
            let _ = write!(out, "{label}=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        if !labels.is_empty() {
            out.push('}');
        }
        let _ = match value {
            v if v.is_nan() => writeln!(out, " NaN"),
            v if v == f64::INFINITY => writeln!(out, " +Inf"),
            v if v == f64::NEG_INFINITY => writeln!(out, " -Inf"),
            v => writeln!(out, " {v}"),
        };
    }

    /// The exposition's text.
    pub fn finish(self) -> String {
        let mut out =
            String::with_capacity(self.families.iter().map(|f| f.samples.len() + 96).sum());
        for f in self.families {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{samples}",
                name = f.name,
                help = f.help,
                kind = f.kind.as_str(),
                samples = f.samples
            );
        }
        out
    }
}
