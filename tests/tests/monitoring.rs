//! What an on-call person relies on in `observability/` (issue 14 part 4):
//! - every Grafana dashboard parses, and every query in it names metrics the code emits (or a
//!   recording rule of `alerts.yml`): a renamed metric cannot leave a panel silently empty;
//! - every alert rule's query names metrics the code emits;
//! - every alert, at each of its severities, has a promtool unit test case where it fires
//!   (`observability/tests/alerts.test.yml`; `promtool test rules` runs them in CI);
//! - every alert links a runbook that exists and says what to check and what to do.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// The string literals of Rust source `text`, up to its first `#[cfg(test)]` (where this
/// repository keeps its unit tests): escapes, raw strings, char literals such as `'"'`,
/// lifetimes and comments are read as Rust reads them.
fn string_literals(text: &str) -> Vec<String> {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            '\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                if chars.get(i + 1) == Some(&'\\') {
                    // The quote, the backslash and the escaped character ('\'' included).
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            'r' if (chars.get(i + 1) == Some(&'"') || chars.get(i + 1) == Some(&'#'))
                && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')) =>
            {
                let mut hashes = 0;
                let mut j = i + 1;
                while chars.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                let mut k = start;
                let mut end = chars.len();
                while k < chars.len() {
                    if chars[k] == '"' && (1..=hashes).all(|h| chars.get(k + h) == Some(&'#')) {
                        end = k;
                        break;
                    }
                    k += 1;
                }
                out.push(chars[start..end].iter().collect());
                i = end + 1 + hashes;
            }
            '"' => {
                let mut literal = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if let Some(c) = chars.get(i) {
                        literal.push(*c);
                    }
                    i += 1;
                }
                out.push(literal);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Every string literal in the Rust sources of the crates and the facade, outside their tests,
/// that could be a metric name: `counter!("jobs_dead_total", …)`, a textfile writer's
/// `("thali_backup_…", …)`.
fn emitted() -> BTreeSet<String> {
    let mut sources = Vec::new();
    files(&root().join("crates"), "rs", &mut sources);
    files(&root().join("facade"), "rs", &mut sources);
    let mut names = BTreeSet::new();
    for file in sources {
        let inside = file.strip_prefix(root()).unwrap_or(&file);
        if inside
            .components()
            .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "benches")
        {
            continue;
        }
        for literal in string_literals(&std::fs::read_to_string(&file).unwrap()) {
            if literal.contains('_')
                && literal
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(literal);
            }
        }
    }
    // Prometheus's own series, and node_exporter's textfile collector, which reads what
    // `thali backup --metrics-file` writes.
    for external in ["up", "node_textfile_scrape_error", "node_textfile_mtime_seconds"] {
        names.insert(external.into());
    }
    names
}

/// The metric names a PromQL expression reads: what is left once label matchers, strings,
/// ranges, grouping clauses, functions, keywords and numbers are taken away. Histogram series
/// are named by their family (`_bucket`, `_sum`, `_count` taken off).
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut text = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' if depth_brace == 0 => in_string = !in_string,
            _ if in_string => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            c => text.push(c),
        }
    }
    // Operators, and aggregations written before their clause (`max by (job) (…)`).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    // Clauses whose parentheses hold label names: `by (job, le)`, `on (job) group_left (cert)`.
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = text.chars().collect();
    let next_non_space = |from: usize| chars[from..].iter().position(|c| !c.is_whitespace()).map(|p| from + p);
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // A Grafana variable ($__rate_interval, $service).
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let token: String = chars[start..i].iter().collect();
            let next = next_non_space(i);
            let calls = next.is_some_and(|n| chars[n] == '(');
            if GROUPING.contains(&token.as_str()) {
                if let Some(n) = next.filter(|_| calls) {
                    i = chars[n..]
                        .iter()
                        .position(|c| *c == ')')
                        .map_or(chars.len(), |p| n + p + 1);
                }
            } else if !calls && !KEYWORDS.contains(&token.as_str()) {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| token.strip_suffix(s))
                    .unwrap_or(&token);
                names.insert(family.to_owned());
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number, with its exponent or duration unit (1e3, 0.5, 5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The PromQL expressions of a Grafana dashboard, wherever its panels nest them.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    // Template variables: `label_values(metric, label)`.
                    ("query", serde_json::Value::String(q)) if q.contains('(') => out.push(q.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// One rule of `alerts.yml` as the file writes it (this repository's layout: `- alert:` or
/// `- record:`, then `expr:` inline or as a `|` block, `severity:` and `runbook_url:`).
#[derive(Debug, Default)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    severity: Option<String>,
    runbook: Option<String>,
}

fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(root().join("observability/alerts.yml")).unwrap();
    let mut rules: Vec<Rule> = Vec::new();
    let mut block_indent: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if let Some(at) = block_indent {
            if trimmed.is_empty() || indent > at {
                let rule = rules.last_mut().unwrap();
                rule.expr.push_str(trimmed);
                rule.expr.push('\n');
                continue;
            }
            block_indent = None;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: Some(name.trim().to_owned()),
                ..Rule::default()
            });
        } else if let Some(name) = trimmed.strip_prefix("- record:") {
            rules.push(Rule {
                record: Some(name.trim().to_owned()),
                ..Rule::default()
            });
        } else if let Some(expr) = trimmed.strip_prefix("expr:") {
            let expr = expr.trim();
            if ["|", "|-", "|+", ">", ">-", ">+"].contains(&expr) {
                block_indent = Some(indent);
            } else {
                rules.last_mut().unwrap().expr = expr.to_owned();
            }
        } else if let Some(sev) = trimmed.strip_prefix("severity:") {
            rules.last_mut().unwrap().severity = Some(sev.trim().to_owned());
        } else if let Some(url) = trimmed.strip_prefix("runbook_url:") {
            rules.last_mut().unwrap().runbook = Some(url.trim().to_owned());
        }
    }
    rules
}

#[test]
fn the_name_scan_sees_metrics_and_skips_functions_labels_and_variables() {
    let expr = r#"histogram_quantile(0.99, sum by (job, le) (rate(http_server_request_duration_seconds_bucket{route!~"/healthz|/readyz"}[5m])))
        / on (job) group_left max by (job) (db_pool_max_connections) > 14.4 * 0.01 and job:facade_slow_ratio:rate1h
        or sum(rate(cache_requests_total{result="hit"}[$__rate_interval])) unless absent(up)"#;
    let want: BTreeSet<String> = [
        "http_server_request_duration_seconds",
        "db_pool_max_connections",
        "job:facade_slow_ratio:rate1h",
        "cache_requests_total",
        "up",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(metrics_in(expr), want);
}

#[test]
fn the_literal_scan_reads_rust_strings_as_rust_does() {
    let source = r##"let q = '"'; let s = "a \"quoted\" one"; // "comment_total"
        fn f<'a>(x: &'a str) {} /* "block_total" */ let r = r#"raw "inside" x"#; let e = ['\'','"'];
        let m = "jobs_dead_total";
        #[cfg(test)] mod tests { const T: &str = "test_only_total"; }"##;
    assert_eq!(
        string_literals(source),
        ["a \"quoted\" one", "raw \"inside\" x", "jobs_dead_total"]
    );
}

#[test]
fn every_dashboard_parses_and_each_query_reads_metrics_the_code_emits() {
    let emitted = emitted();
    let recorded: BTreeSet<String> = rules().into_iter().filter_map(|r| r.record).collect();
    let mut dashboards = Vec::new();
    files(
        &root().join("observability/grafana/dashboards"),
        "json",
        &mut dashboards,
    );
    assert!(
        dashboards.len() >= 3,
        "services and mesh, cache and jobs, business: {dashboards:?}"
    );
    let mut unknown = BTreeMap::new();
    for file in &dashboards {
        let text = std::fs::read_to_string(file).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            json["uid"].is_string() && json["title"].is_string(),
            "{}",
            file.display()
        );
        let mut exprs = Vec::new();
        dashboard_exprs(&json, &mut exprs);
        assert!(!exprs.is_empty(), "{} has no queries", file.display());
        for expr in exprs {
            let names = metrics_in(&expr);
            assert!(!names.is_empty(), "{}: no metric in {expr}", file.display());
            for name in names {
                if !emitted.contains(&name) && !recorded.contains(&name) {
                    unknown.insert(name, format!("{}: {expr}", file.display()));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "queries name metrics nothing emits: {unknown:#?}");
}

#[test]
fn every_alert_reads_emitted_metrics_has_a_firing_test_at_each_severity_and_a_runbook() {
    let emitted = emitted();
    let rules = rules();
    let recorded: BTreeSet<String> = rules.iter().filter_map(|r| r.record.clone()).collect();
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.alert.is_some()).collect();
    assert!(alerts.len() >= 20, "{} alerts", alerts.len());
    let tests = std::fs::read_to_string(root().join("observability/tests/alerts.test.yml")).unwrap();
    // (alert, severity) pairs a test case expects to fire.
    let mut fired = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_owned());
        } else if line.starts_with("- name:") || line.starts_with("- eval_time:") {
            current = None;
        } else if let (Some(alert), Some(labels)) = (&current, line.strip_prefix("- exp_labels:")) {
            let severity = labels
                .split(['{', '}', ','])
                .find_map(|kv| kv.trim().strip_prefix("severity:"))
                .map(|s| s.trim().to_owned());
            fired.insert((alert.clone(), severity.unwrap_or_default()));
        }
    }
    let mut problems = Vec::new();
    for rule in &alerts {
        let alert = rule.alert.clone().unwrap();
        let severity = rule.severity.clone().unwrap_or_default();
        if !["critical", "warning"].contains(&severity.as_str()) {
            problems.push(format!("{alert}: severity {severity:?}"));
        }
        let names = metrics_in(&rule.expr);
        if names.is_empty() {
            problems.push(format!("{alert} ({severity}): no metric in {:?}", rule.expr));
        }
        for name in names {
            if !emitted.contains(&name) && !recorded.contains(&name) {
                problems.push(format!("{alert} ({severity}) reads {name}, which nothing emits"));
            }
        }
        if !fired.contains(&(alert.clone(), severity.clone())) {
            problems.push(format!("{alert} ({severity}) has no promtool case where it fires"));
        }
        match &rule.runbook {
            None => problems.push(format!("{alert}: no runbook_url")),
            Some(url) => match std::fs::read_to_string(root().join(url)) {
                Err(e) => problems.push(format!("{alert}: runbook {url}: {e}")),
                Ok(text) => {
                    for heading in ["## What it means", "## First checks", "## Mitigation"] {
                        if !text.contains(heading) {
                            problems.push(format!("{alert}: {url} has no {heading:?}"));
                        }
                    }
                    if !text.contains("```") {
                        problems.push(format!("{alert}: {url} gives no command to run"));
                    }
                }
            },
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_promql_in_every_runbook_reads_metrics_the_code_emits() {
    let emitted = emitted();
    let recorded: BTreeSet<String> = rules().into_iter().filter_map(|r| r.record).collect();
    let mut runbooks = Vec::new();
    files(&root().join("docs/runbooks"), "md", &mut runbooks);
    let mut unknown = Vec::new();
    let mut queries = 0;
    for file in runbooks {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut in_promql = false;
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("```") {
                in_promql = !in_promql && trimmed == "```promql";
                continue;
            }
            if !in_promql || trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            queries += 1;
            let names = metrics_in(trimmed);
            // A line of a query split over several (a lone `/` between two halves) names none.
            if names.is_empty() && trimmed.chars().any(|c| c.is_ascii_alphabetic()) {
                unknown.push(format!("{}: no metric in {trimmed}", file.display()));
            }
            for name in names {
                if !emitted.contains(&name) && !recorded.contains(&name) {
                    unknown.push(format!("{}: {name} in {trimmed}", file.display()));
                }
            }
        }
    }
    assert!(queries > 20, "{queries} queries");
    assert!(unknown.is_empty(), "{unknown:#?}");
}
