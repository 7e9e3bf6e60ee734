//! The operator's kit names only metrics the daemon serves: every metric in an expression of the
//! Prometheus alert rules (`deploy/prometheus-alerts.yml`) or of the Grafana dashboard
//! (`deploy/grafana-dashboard.json`) is in the metric catalogue (`metrics::CATALOGUE`, the
//! README's table). A renamed or removed metric fails here instead of silencing an alert.

use std::collections::BTreeSet;
use std::path::Path;

use opencti_stream_exporter::metrics::CATALOGUE;

/// Metrics Prometheus itself makes for every scrape target.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// PromQL words that are neither functions nor metrics: operators, modifiers, and aggregations
/// (which may be followed by `by (…)` before their parenthesis).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// PromQL words followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not functions, keywords,
/// label names or numbers. Label matchers (`{…}`), ranges (`[…]`) and strings are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_past(&chars, i + 1, c),
            '{' => i = skip_past(&chars, i + 1, '}'),
            '[' => i = skip_past(&chars, i + 1, ']'),
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let opens = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if opens {
                        i = skip_past(&chars, next + 1, ')');
                    }
                } else if !opens && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The index just past the next `end` at or after `from` (or the end of the text).
fn skip_past(chars: &[char], from: usize, end: char) -> usize {
    chars[from.min(chars.len())..]
        .iter()
        .position(|&c| c == end)
        .map_or(chars.len(), |at| from + at + 1)
}

/// Whether `name` is served: a catalogue name, a histogram's `_bucket`/`_sum`/`_count` series,
/// or a metric of Prometheus itself.
fn is_served(name: &str) -> bool {
    PROMETHEUS_OWN.contains(&name)
        || CATALOGUE.iter().any(|doc| {
            doc.name == name
                || (doc.kind() == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(doc.name)))
        })
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Every `expr` of every rule in the alert rules file.
fn alert_expressions() -> Vec<String> {
    let rules: serde_norway::Value =
        serde_norway::from_str(&read("deploy/prometheus-alerts.yml")).expect("the rules are YAML");
    let groups = rules["groups"].as_sequence().expect("rule groups");
    groups
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").iter())
        .map(|rule| {
            rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a rule without expr: {rule:?}"))
                .to_string()
        })
        .collect()
}

/// Every query of the dashboard: the panels' targets and the template variables' queries.
fn dashboard_expressions() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana-dashboard.json"))
        .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("panel targets") {
            exprs.push(
                target["expr"]
                    .as_str()
                    .expect("a target's expr")
                    .to_string(),
            );
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(metric, label): the label is no metric.
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or(query);
            exprs.push(metric.to_string());
        }
    }
    exprs
}

fn assert_all_served(file: &str, exprs: &[String], at_least: usize) {
    let names: BTreeSet<String> = exprs.iter().flat_map(|expr| metric_names(expr)).collect();
    assert!(
        names.len() >= at_least,
        "{file}: only {names:?} found in {exprs:?}"
    );
    let unknown: Vec<&String> = names.iter().filter(|name| !is_served(name)).collect();
    assert!(
        unknown.is_empty(),
        "{file} names metrics the daemon does not serve (not in metrics::CATALOGUE): {unknown:?}"
    );
}

#[test]
fn the_names_of_an_expression_are_its_metrics_only() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (instance, le) (rate(a_seconds_bucket{instance=~"$instance", x="b c"}[$__rate_interval])))
           / on (instance) group_left (name) b_total offset 5m > 1e3 and c unless up == bool 0
           or sum(d) by (instance) or max without (instance) (e)"#,
    );
    let expected: BTreeSet<String> = ["a_seconds_bucket", "b_total", "c", "d", "e", "up"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
}

#[test]
fn every_metric_in_the_alert_rules_is_served() {
    let exprs = alert_expressions();
    assert!(exprs.len() >= 9, "{exprs:?}");
    assert_all_served("deploy/prometheus-alerts.yml", &exprs, 8);
}

#[test]
fn every_metric_in_the_dashboard_is_served() {
    let exprs = dashboard_expressions();
    assert_all_served("deploy/grafana-dashboard.json", &exprs, 15);
}
