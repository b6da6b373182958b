//! Prometheus text-format metrics: VMs and devices by state (from the database),
//! scrub durations and API latency (counted in memory since start).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::model::{DeviceState, NodeState, VmState};

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {b}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (method, route, status) → latency.
    api: BTreeMap<(String, String, u16), Histogram>,
    /// outcome → scrub duration.
    scrubs: BTreeMap<String, Histogram>,
}

/// Counters kept since start.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn api_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.api
            .entry((method.into(), route.into(), status))
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn scrub_done(&self, outcome: &str, took: Duration) {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.scrubs
            .entry(outcome.into())
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The whole exposition.
    pub fn render(&self, st: &NodeState) -> String {
        let mut out = String::new();
        out.push_str("# HELP bulwarkd_vms VMs by state.\n# TYPE bulwarkd_vms gauge\n");
        for s in VmState::ALL {
            let n = st.vms.values().filter(|v| v.state == s).count();
            let _ = writeln!(out, "bulwarkd_vms{{state=\"{}\"}} {n}", s.name());
        }
        out.push_str(
            "# HELP bulwarkd_devices Tracked devices by state.\n# TYPE bulwarkd_devices gauge\n",
        );
        for s in DeviceState::ALL {
            let n = st.devices.values().filter(|d| d.state == s).count();
            let _ = writeln!(out, "bulwarkd_devices{{state=\"{}\"}} {n}", s.name());
        }
        let _ = writeln!(out, "# HELP bulwarkd_node_owned 1 while a tenant owns the node.\n# TYPE bulwarkd_node_owned gauge\nbulwarkd_node_owned {}", u8::from(st.tenancy.owner.is_some()));
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP bulwarkd_scrub_duration_seconds Scrub durations by outcome.\n# TYPE bulwarkd_scrub_duration_seconds histogram\n");
        for (outcome, h) in &i.scrubs {
            h.write(
                &mut out,
                "bulwarkd_scrub_duration_seconds",
                &format!("outcome=\"{outcome}\""),
            );
        }
        out.push_str("# HELP bulwarkd_api_request_duration_seconds API latency by method, route and status.\n# TYPE bulwarkd_api_request_duration_seconds histogram\n");
        for ((m, r, s), h) in &i.api {
            h.write(
                &mut out,
                "bulwarkd_api_request_duration_seconds",
                &format!("method=\"{m}\",route=\"{r}\",status=\"{s}\""),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.scrub_done("passed", Duration::from_millis(3));
        m.scrub_done("passed", Duration::from_secs(2));
        let text = m.render(&NodeState::default());
        assert!(
            text.contains(
                "bulwarkd_scrub_duration_seconds_bucket{outcome=\"passed\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("bulwarkd_scrub_duration_seconds_bucket{outcome=\"passed\",le=\"5\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("bulwarkd_scrub_duration_seconds_count{outcome=\"passed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("bulwarkd_devices{state=\"available\"} 0"),
            "{text}"
        );
        assert!(text.contains("bulwarkd_vms{state=\"running\"} 0"), "{text}");
    }
}
