//! A misbehaving platform cannot make the exporter re-export the world: the real OpenCTI API task
//! pings a small scripted GraphQL server (real HTTP on 127.0.0.1) with a real WAL, and the test
//! counts the state resets it asks the daemon for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use opencti_stream_exporter::budget::Budget;
use opencti_stream_exporter::opencti_api::{
    self, ApiContext, ApiSettings, ApiStats, GraphqlClient, ResetRequest,
};
use opencti_stream_exporter::secret::Secret;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wal::{Wal, WalOptions};

/// What the scripted platform answers to a ping.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// As OpenCTI: the stored state, or `""` once after a reset request.
    Faithful,
    /// Always `""`.
    AlwaysEmptyString,
    /// In turn: no `connector_state` key, `null`, `"null"`, `"{}"`.
    NoState,
}

#[derive(Debug)]
struct Platform {
    answer: Answer,
    stored: Option<String>,
    reset_requested: bool,
    pings: u64,
}

type Shared = Arc<Mutex<Platform>>;

async fn graphql(State(platform): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    let query = body["query"].as_str().unwrap_or_default();
    let sent = body["variables"]["state"].as_str().map(str::to_owned);
    let mut platform = platform.lock().expect("platform lock");
    if query.contains("registerConnector") {
        return Json(json!({"data": {"registerConnector": {
            "id": "c", "connector_state": null, "connector_user_id": "u"
        }}}));
    }
    platform.pings += 1;
    let ping = match platform.answer {
        Answer::Faithful => {
            if platform.reset_requested {
                platform.reset_requested = false;
                platform.stored = Some(String::new());
            } else {
                platform.stored = sent;
            }
            json!({"id": "c", "connector_state": platform.stored})
        }
        Answer::AlwaysEmptyString => json!({"id": "c", "connector_state": ""}),
        Answer::NoState => match platform.pings % 4 {
            0 => json!({"id": "c"}),
            1 => json!({"id": "c", "connector_state": null}),
            2 => json!({"id": "c", "connector_state": "null"}),
            _ => json!({"id": "c", "connector_state": "{}"}),
        },
    };
    Json(json!({"data": {"pingConnector": ping}}))
}

/// The API task against a scripted platform, and what it asked for.
struct Run {
    platform: Shared,
    stats: Arc<ApiStats>,
    resets: Arc<AtomicU64>,
    cancel: CancellationToken,
    _wal_dir: tempfile::TempDir,
}

impl Run {
    async fn start(answer: Answer, min_reset_interval: Duration) -> Self {
        let platform = Arc::new(Mutex::new(Platform {
            answer,
            stored: None,
            reset_requested: false,
            pings: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the platform");
        let addr = listener.local_addr().expect("platform address");
        let app = axum::Router::new()
            .route("/graphql", post(graphql))
            .with_state(Arc::clone(&platform));
        let cancel = CancellationToken::new();
        let server_cancel = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(server_cancel.cancelled_owned())
                .await;
        });

        let wal_dir = tempfile::tempdir().expect("WAL directory");
        let (wal, _) = Wal::open(WalOptions::new(wal_dir.path(), 1 << 30)).expect("opening a WAL");
        let base = reqwest::Url::parse(&format!("http://{addr}/")).expect("platform URL");
        let client = GraphqlClient::new(
            reqwest::Client::new(),
            &base,
            Secret::new("token"),
            Duration::from_secs(5),
        );
        let settings = ApiSettings {
            connector_id: "c".into(),
            name: "exporter".into(),
            scope: vec![],
            ping_interval: Duration::from_millis(50),
            min_reset_interval,
        };
        let stats = Arc::new(ApiStats::default());
        let (resets_tx, mut resets_rx) = mpsc::channel::<ResetRequest>(1);
        let resets = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&resets);
        tokio::spawn(async move {
            while let Some(request) = resets_rx.recv().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = request.done.send(Ok(()));
            }
        });
        let context = ApiContext {
            wal,
            budget: Arc::new(Budget::new(1 << 30, 0)),
            stats: Arc::clone(&stats),
            resets: resets_tx,
            uploaded: Arc::new(tokio::sync::Notify::new()),
        };
        tokio::spawn(opencti_api::run(client, settings, context, cancel.clone()));
        Self {
            platform,
            stats,
            resets,
            cancel,
            _wal_dir: wal_dir,
        }
    }

    fn pings(&self) -> u64 {
        self.platform.lock().expect("platform lock").pings
    }

    fn resets(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }

    fn refused(&self) -> u64 {
        self.stats.resets_refused.load(Ordering::SeqCst)
    }

    fn request_reset(&self) {
        self.platform.lock().expect("platform lock").reset_requested = true;
    }

    /// Polls until `condition` holds; panics naming `what` after 20 s.
    async fn wait_until(&self, what: &str, condition: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_a_state_is_not_a_reset() {
    let run = Run::start(Answer::NoState, Duration::ZERO).await;
    run.wait_until("a dozen pings", |run| run.pings() >= 12)
        .await;
    assert_eq!(
        run.resets(),
        0,
        "missing, null, \"null\" and {{}} are not resets"
    );
    assert_eq!(run.stats.resets.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_that_keeps_answering_a_reset_causes_one_reset_not_a_storm() {
    // Even with no minimum interval: the platform never stores the state sent after the reset.
    let run = Run::start(Answer::AlwaysEmptyString, Duration::ZERO).await;
    run.wait_until("a dozen pings", |run| run.pings() >= 12)
        .await;
    assert_eq!(run.resets(), 1, "one reset, then refusals");
    assert!(run.refused() >= 10, "refusals counted: {}", run.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faithful_platform_gets_its_resets_once_it_stored_the_new_state() {
    let run = Run::start(Answer::Faithful, Duration::ZERO).await;
    run.wait_until("a first ping", |run| run.pings() >= 1).await;
    for expected in 1..=3 {
        run.request_reset();
        run.wait_until("the reset", |run| run.resets() == expected)
            .await;
        let pings = run.pings();
        run.wait_until("a ping storing the new state", |run| {
            run.pings() > pings + 1
        })
        .await;
    }
    assert_eq!(run.refused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_rate_limited() {
    let run = Run::start(Answer::Faithful, Duration::from_secs(3600)).await;
    run.wait_until("a first ping", |run| run.pings() >= 1).await;
    run.request_reset();
    run.wait_until("the reset", |run| run.resets() == 1).await;
    let pings = run.pings();
    run.wait_until("a ping storing the new state", |run| {
        run.pings() > pings + 1
    })
    .await;
    run.request_reset();
    run.wait_until("the second reset answer", |run| run.refused() == 1)
        .await;
    let pings = run.pings();
    run.wait_until("more pings", |run| run.pings() > pings + 5)
        .await;
    assert_eq!(
        run.resets(),
        1,
        "the second reset within the interval is refused"
    );
}
