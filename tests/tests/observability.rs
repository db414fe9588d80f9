//! What operators rely on survives the cheaper hot path (ADR 0024): with no new trace kept
//! (ratio 0) and access lines for errors only, every request is still counted by route and
//! status, an error is still logged with the trace id its answer carries, and a trace a caller
//! sampled is still followed across hops.
mod support;

use reqwest::StatusCode;
use serde_json::Value;
use support::{Mesh, access, json_of, metrics};
use thali_platform::config::AccessLog;

/// The count of `http_server_request_duration_seconds` for the storefront route and `status`.
fn counted(text: &str, status: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .filter(|l| l.contains(r#"route="/api/v1/store/{username}""#) && l.contains(&format!(r#"status="{status}""#)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn unsampled_requests_are_counted_errors_are_logged_with_their_trace_and_callers_decide() {
    support::capture_logs_sampled(0.0);
    thali_platform::telemetry::set_access_log(AccessLog::Errors);
    let mesh = Mesh::start().await;
    let creator = access(&mesh.sign_up("asha@example.com", "creator").await);
    mesh.create_creator(&creator, "chai_point").await;

    for _ in 0..3 {
        json_of(mesh.get("/api/v1/store/chai_point").await, StatusCode::OK).await;
    }
    let missing = json_of(mesh.get("/api/v1/store/nobody_here").await, StatusCode::NOT_FOUND).await;
    let trace_id = missing["trace_id"]
        .as_str()
        .expect("the problem names its trace")
        .to_owned();
    assert_eq!(trace_id.len(), 32, "{missing}");

    // Every request counted by route and status, sampled out or not.
    let text = metrics(&mesh).await;
    assert!(counted(&text, "200") >= 3.0, "{text}");
    assert!(counted(&text, "404") >= 1.0, "{text}");

    // Access lines: the error's, with the trace id its answer carries; none for the healthy reads.
    let logs = support::logs();
    let access: Vec<&str> = logs.lines().filter(|l| l.contains("thali::access: request")).collect();
    assert!(
        access.iter().any(|l| l.contains("status=404") && l.contains(&trace_id)),
        "{access:#?}"
    );
    assert!(access.iter().all(|l| !l.contains("status=200")), "{access:#?}");

    // Nothing begun here was exported (ratio 0)...
    let exported = support::spans().get_finished_spans().unwrap();
    assert!(
        exported
            .iter()
            .all(|s| s.span_context.trace_id().to_string() != trace_id),
        "an unsampled trace is not exported"
    );
    // ...but a caller that sampled its trace is followed, through the facade and the service
    // (a store never read before, so the service answers, not the facade's cache).
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = mesh
        .http
        .get(mesh.url("/api/v1/store/first_time_read"))
        .header("traceparent", format!("00-{sampled}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let mut kinds = Vec::new();
    for _ in 0..100 {
        kinds = support::spans()
            .get_finished_spans()
            .unwrap()
            .iter()
            .filter(|s| s.span_context.trace_id().to_string() == sampled)
            .map(|s| s.name.to_string())
            .collect::<Vec<_>>();
        if kinds.iter().any(|n| n.contains("StorefrontService")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(kinds.iter().any(|n| n.starts_with("GET")), "{kinds:?}");
    assert!(kinds.iter().any(|n| n.contains("StorefrontService")), "{kinds:?}");
    // A caller that did not sample: its trace id is kept (and answered), nothing is exported.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let res = mesh
        .http
        .get(mesh.url("/api/v1/store/nobody_either"))
        .header("traceparent", format!("00-{unsampled}-b7ad6b7169203331-00"))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["trace_id"], unsampled);
    assert!(
        support::spans()
            .get_finished_spans()
            .unwrap()
            .iter()
            .all(|s| s.span_context.trace_id().to_string() != unsampled)
    );
}
