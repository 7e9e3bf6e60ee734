//! Helpers of the operations tests (`tests/ops_*.rs`), on top of [`super::daemon`]'s harness:
//! turning the daemon's HTTP endpoint on at a free port, asking it, and polling async
//! conditions with a deadline.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use simulator::{GraphqlCall, SimulatorHandle};

use super::daemon::Harness;

/// How often async waits poll.
const POLL: Duration = Duration::from_millis(50);

/// A port free on 127.0.0.1 right now (the OS's pick; released before returning, so a daemon
/// can bind it).
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// The daemon's endpoint on 127.0.0.1 at a free port (returned), and pings every second.
pub fn with_endpoint(harness: Harness) -> (Harness, u16) {
    let port = free_port();
    let harness = harness
        .set("CONNECTOR_EXPOSE_METRICS", "true")
        .set("CONNECTOR_METRICS_BIND", "127.0.0.1")
        .set("CONNECTOR_METRICS_PORT", &port.to_string())
        .set("OPENCTI_PING_INTERVAL_SEC", "1");
    (harness, port)
}

/// `GET http://127.0.0.1:{port}{path}`: the status and body, or `None` when nothing answers.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.text().await.ok()?;
    Some((status, body))
}

/// `GET {path}` parsed as JSON, with its status; `None` when nothing answers.
pub async fn get_json(port: u16, path: &str) -> Option<(u16, serde_json::Value)> {
    let (status, body) = get(port, path).await?;
    let value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} answers JSON ({e}): {body}"));
    Some((status, value))
}

/// Polls the async `condition` until it holds; panics naming `what` after `timeout`.
pub async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the endpoint answers `path` with `status`; returns the body.
pub async fn wait_for_answer(port: u16, path: &str, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = get(port, path).await;
        if let Some((code, body)) = &answer
            && *code == status
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for GET {path} to answer {status}; last answer: {answer:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The `/status` JSON, or `None` while nothing answers (for polling).
pub async fn try_status(port: u16) -> Option<serde_json::Value> {
    get_json(port, "/status")
        .await
        .and_then(|(code, value)| (code == 200).then_some(value))
}

/// The `/status` JSON of the running daemon.
pub async fn status(port: u16) -> serde_json::Value {
    let (code, value) = get_json(port, "/status")
        .await
        .expect("the daemon answers /status");
    assert_eq!(code, 200, "/status answers 200: {value}");
    value
}

/// The `pingConnector` calls the simulator received, in order.
pub fn pings(sim: &SimulatorHandle) -> Vec<GraphqlCall> {
    sim.graphql_calls()
        .into_iter()
        .filter(|call| call.operation == "pingConnector")
        .collect()
}

/// The state (parsed JSON object) sent by a ping.
pub fn ping_state(call: &GraphqlCall) -> serde_json::Value {
    let text = call.variables["state"].as_str().unwrap_or_else(|| {
        panic!(
            "a ping sends its state as a JSON string: {:?}",
            call.variables
        )
    });
    serde_json::from_str(text).expect("the state string is JSON")
}

/// One sample of a scrape: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// The sample name.
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A scrape of `/metrics`, parsed (OpenMetrics text as `prometheus-client` writes it: label
/// values without escaped quotes or commas, which holds for every label the daemon writes).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// `# TYPE` of each family.
    pub types: std::collections::BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<MetricSample>,
    /// The text ended with `# EOF`.
    pub complete: bool,
}

impl Scrape {
    /// Parses the text of `/metrics`.
    pub fn parse(text: &str) -> Self {
        let mut scrape = Scrape {
            complete: text.ends_with("# EOF\n"),
            ..Scrape::default()
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                scrape.types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value.parse().expect("a numeric value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect("closing brace");
                    let labels = labels
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once('=').expect("label=value");
                            (key.to_string(), value.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), Default::default()),
            };
            scrape.samples.push(MetricSample {
                name,
                labels,
                value,
            });
        }
        scrape
    }

    /// The samples named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a MetricSample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: std::collections::BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.named(name)
            .find(|s| s.labels == wanted)
            .map(|s| s.value)
    }
}

/// Scrapes `/metrics`.
pub async fn scrape(port: u16) -> Scrape {
    let (code, body) = get(port, "/metrics")
        .await
        .expect("the daemon answers /metrics");
    assert_eq!(code, 200, "/metrics answers 200");
    Scrape::parse(&body)
}
