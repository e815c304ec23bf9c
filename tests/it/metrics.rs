//! `GET /metrics` read by a Prometheus text parser (not string matching), on a
//! two-node cluster after some writes.

use std::time::Duration;

use kvs::config::Config;
use kvs::daemon::{self, Options};
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use serde_json::json;

use crate::support::{client, eventually};

fn config(dir: &std::path::Path, seeds: Vec<String>) -> Config {
    let mut config = Config::from_yaml("").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_owned();
    config.seeds = seeds;
    config.sync_interval = Duration::from_millis(100);
    config.gossip_interval = Duration::from_millis(50);
    config.join_timeout = Duration::from_secs(3);
    config
}

type Scrape = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// `/metrics`, parsed by an OpenMetrics parser (which refuses a malformed exposition).
async fn scrape(http: &reqwest::Client, base: &str) -> Scrape {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|error| panic!("unparsable exposition: {error:?}\n{text}"))
}

/// The value of the family's first sample carrying `labels` (a histogram's count).
fn value(scrape: &Scrape, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = scrape.families.get(family)?;
    family
        .iter_samples()
        .find(|sample| {
            let set = sample.get_labelset().unwrap();
            labels.iter().all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|sample| match &sample.value {
            OpenMetricsValue::Counter(counter) => counter.value.as_f64(),
            OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            _ => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_parse_and_count_requests_flushes_records_members_and_rounds() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let first = daemon::start(config(dirs[0].path(), vec![]), Options::default()).await.unwrap();
    let seed = first.addr().to_string();
    let second =
        daemon::start(config(dirs[1].path(), vec![seed]), Options::default()).await.unwrap();
    let (a, b) = (format!("http://{}", first.addr()), format!("http://{}", second.addr()));
    let http = client();
    for n in 0..5 {
        let created =
            http.post(format!("{a}/todos")).json(&json!({"todo": format!("m{n}")})).send().await;
        assert_eq!(created.unwrap().status(), 201);
    }
    http.put(format!("{a}/kv/some/doc")).json(&json!({"x": 1})).send().await.unwrap();
    assert_eq!(http.get(format!("{a}/todos/not-an-id")).send().await.unwrap().status(), 400);

    let scraped = eventually("a round with the peer, roots equal", Duration::from_secs(30), || {
        let (http, a) = (http.clone(), a.clone());
        async move {
            let scraped = scrape(&http, &a).await;
            (value(&scraped, "kvs_root_equal", &[]) == Some(1.0)).then_some(scraped)
        }
    })
    .await;
    let posts = [("route", "/todos"), ("method", "POST"), ("status", "201")];
    assert_eq!(value(&scraped, "kvs_http_requests", &posts), Some(5.0));
    let bad = [("route", "/todos/{id}"), ("method", "GET"), ("status", "400")];
    assert_eq!(value(&scraped, "kvs_http_requests", &bad), Some(1.0));
    let routes = &scraped.families["kvs_http_requests"];
    assert!(routes.iter_samples().all(|s| {
        !s.get_labelset().unwrap().get_label_value("route").unwrap().contains("not-an-id")
    }));
    assert_eq!(value(&scraped, "kvs_records", &[("kind", "todo")]), Some(5.0));
    assert_eq!(value(&scraped, "kvs_records", &[("kind", "document")]), Some(1.0));
    assert_eq!(value(&scraped, "kvs_members", &[("state", "alive")]), Some(2.0));
    assert!(value(&scraped, "kvs_durable_flush_duration_seconds", &[]).unwrap() >= 1.0);
    assert!(value(&scraped, "kvs_sync_rounds", &[("outcome", "ok")]).unwrap() >= 1.0);
    assert!(value(&scraped, "kvs_seconds_since_last_sync", &[]).unwrap() < 30.0);
    assert_eq!(value(&scraped, "kvs_push_records_dropped", &[]), Some(0.0));
    assert_eq!(
        value(&scraped, "kvs_push_records_relayed", &[]),
        Some(0.0),
        "two nodes never relay"
    );
    // b gossips with a every 50 ms: both directions of the exchanges a answered.
    for direction in ["received", "sent"] {
        let bytes = value(&scraped, "kvs_membership_bytes", &[("direction", direction)]);
        assert!(bytes.unwrap() > 0.0, "{direction}: {bytes:?}");
    }
    assert_eq!(value(&scraped, "kvs_ready", &[]), Some(1.0));
    assert_eq!(value(&scraped, "kvs_storage_writable", &[]), Some(1.0));
    // The peer's pushes: the writes reached it and were counted there as requests.
    let on_b = eventually("pushes reached the peer", Duration::from_secs(30), || {
        let (http, b) = (http.clone(), b.clone());
        async move {
            let scraped = scrape(&http, &b).await;
            (value(&scraped, "kvs_records", &[("kind", "todo")]) == Some(5.0)).then_some(scraped)
        }
    })
    .await;
    assert!(
        value(&on_b, "kvs_http_requests", &[("route", "/internal/v1/records")]).is_some()
            || value(&on_b, "kvs_sync_rounds", &[("outcome", "ok")]).is_some()
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}
