//! CPU and RSS of this process and of the server pids, from /proc.

use serde_json::{json, Value};

/// Linux USER_HZ: /proc/*/stat counts CPU time in these ticks.
const CLK_TCK: f64 = 100.0;

/// utime+stime in seconds for one pid ("self" allowed).
pub(crate) fn proc_cpu(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the last ')' start at field 3 (state); utime=14, stime=15.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / CLK_TCK)
}

/// VmRSS in bytes.
pub(crate) fn proc_rss(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn server_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| proc_cpu(&p.to_string())).sum()
}

/// CPU seconds of each pid (None where /proc could not be read).
fn pid_cpus(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter().map(|p| proc_cpu(&p.to_string())).collect()
}

/// {"PID": {"cpu_s": X}} for the CPU used between two pid_cpus samples.
fn cpu_by_pid(pids: &[u32], before: &[Option<f64>], after: &[Option<f64>]) -> Value {
    let m: serde_json::Map<String, Value> = pids
        .iter()
        .zip(before.iter().zip(after))
        .map(|(p, (b, a))| {
            let d = a.zip(*b).map(|(a, b)| a - b);
            (p.to_string(), json!({ "cpu_s": d }))
        })
        .collect();
    Value::Object(m)
}

/// CPU counters at one instant: this process and each server pid.
pub(crate) struct CpuMark {
    me: f64,
    server: Vec<Option<f64>>,
}

/// CPU used between two [`CpuMark`]s.
pub(crate) struct CpuUse {
    pub(crate) loadgen: f64,
    /// Each server pid's.
    pub(crate) per_pid: Vec<Option<f64>>,
    /// All server pids' (None when there are none or one could not be read).
    pub(crate) server: Option<f64>,
    /// {"PID": {"cpu_s": X}}
    pub(crate) by_pid: Value,
}

impl CpuMark {
    pub(crate) fn take(pids: &[u32]) -> Self {
        CpuMark { me: proc_cpu("self").unwrap_or(0.0), server: pid_cpus(pids) }
    }

    /// What was used from `start` until this mark.
    pub(crate) fn since(&self, start: &CpuMark, pids: &[u32]) -> CpuUse {
        let loadgen = self.me - start.me;
        let per_pid: Vec<Option<f64>> =
            self.server.iter().zip(&start.server).map(|(a, b)| a.zip(*b).map(|(a, b)| a - b)).collect();
        let server: Option<f64> = if per_pid.is_empty() { None } else { per_pid.iter().copied().sum() };
        CpuUse { loadgen, by_pid: cpu_by_pid(pids, &start.server, &self.server), per_pid, server }
    }
}

pub(crate) fn server_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| proc_rss(&p.to_string())).sum()
}
