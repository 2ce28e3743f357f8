//! Request counters and latency histograms, rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::routes::Route;

const STATUSES: [u16; 11] = [200, 400, 401, 404, 405, 409, 413, 415, 500, 503, 0];
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Requests by route and status, and a latency histogram per route; lock-free.
#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; Route::ALL.len()],
    latency: [Histogram; Route::ALL.len()],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub(crate) fn record(&self, route: Route, status: u16, elapsed: Duration) {
        let route = route as usize;
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[route][s].fetch_add(1, Relaxed);
        let h = &self.latency[route];
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|&le| secs <= le) {
            h.buckets[b].fetch_add(1, Relaxed);
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// Appends the request metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP nearcache_http_requests_total Requests by route and status.\n");
        out.push_str("# TYPE nearcache_http_requests_total counter\n");
        for (r, route) in Route::ALL.iter().map(|r| r.label()).enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = self.requests[r][s].load(Relaxed);
                if n > 0 {
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "nearcache_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP nearcache_http_request_duration_seconds Request latency.\n");
        out.push_str("# TYPE nearcache_http_request_duration_seconds histogram\n");
        for (r, route) in Route::ALL.iter().map(|r| r.label()).enumerate() {
            let h = &self.latency[r];
            let count = h.count.load(Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (b, le) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[b].load(Relaxed);
                let _ = writeln!(
                    out,
                    "nearcache_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "nearcache_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
            );
            let sum = h.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "nearcache_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "nearcache_http_request_duration_seconds_count{{route=\"{route}\"}} {count}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record(Route::GetMe, 200, Duration::from_micros(80));
        m.record(Route::GetMe, 200, Duration::from_millis(3));
        m.record(Route::GetMe, 401, Duration::from_micros(50));
        m.record(Route::Other, 418, Duration::from_micros(50));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("nearcache_http_requests_total{route=\"GET /me\",status=\"200\"} 2\n"));
        assert!(out.contains("nearcache_http_requests_total{route=\"GET /me\",status=\"401\"} 1\n"));
        assert!(out.contains("nearcache_http_requests_total{route=\"other\",status=\"other\"} 1\n"));
        assert!(out.contains(
            "nearcache_http_request_duration_seconds_bucket{route=\"GET /me\",le=\"0.0001\"} 2\n"
        ));
        assert!(out.contains(
            "nearcache_http_request_duration_seconds_bucket{route=\"GET /me\",le=\"0.005\"} 3\n"
        ));
        assert!(
            out.contains("nearcache_http_request_duration_seconds_count{route=\"GET /me\"} 3\n")
        );
    }
}
