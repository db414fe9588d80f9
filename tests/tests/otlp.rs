//! Spans leave the process over OTLP when `THALI_OTLP_ENDPOINT` is set: a fake OTLP collector
//! on an ephemeral port receives the facade's and the storefront's spans of one client trace.
//! (A test binary of its own: telemetry installs the process-wide subscriber.)
use std::{collections::HashMap, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use thali::Part;
use thali_platform::{Config, config::Overrides};
use tokio::sync::Mutex;

#[derive(Clone, Default)]
struct FakeCollector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for FakeCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().await.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_request_reach_the_otlp_collector() {
    let collector = FakeCollector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let data_dir = std::env::temp_dir().join(format!("thali-otlp-{}", uuid::Uuid::now_v7()));
    let env: HashMap<String, String> = [
        ("THALI_DATA_DIR", data_dir.display().to_string()),
        ("THALI_HTTP_ADDR", "127.0.0.1:0".into()),
        ("THALI_GRPC_ADDR", "127.0.0.1:0".into()),
        ("THALI_ADMIN_ADDR", "127.0.0.1:0".into()),
        ("THALI_SANDBOX_ADDR", "127.0.0.1:0".into()),
        ("THALI_OTLP_ENDPOINT", endpoint),
        ("THALI_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = Config::load_from(None, Some(env), &Overrides::default()).unwrap();
    let telemetry = thali_platform::telemetry::init(&cfg, "thali").unwrap();
    let platform = thali::start(&cfg, Part::All).await.unwrap();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let res = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/store/nobody_here",
            platform.http_addr.unwrap()
        ))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Give the last span a moment to end, then flush the batch exporter.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let received = collector.received.lock().await;
    let mut names = Vec::new();
    // (name, kind, span id, parent span id) of the trace's spans.
    let mut spans = Vec::new();
    for request in received.iter() {
        for resource in &request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| format!("{:?}", a.value));
            assert!(service.is_some_and(|s| s.contains("thali")), "service.name is set");
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    if hex(&span.trace_id) == trace_id {
                        // A 404 is the caller's mistake: no span of it is an error (status 2),
                        // which the collector's tail sampling would keep.
                        assert_ne!(span.status.as_ref().map_or(0, |s| s.code), 2, "{}", span.name);
                        names.push(span.name.clone());
                        spans.push((
                            span.name.clone(),
                            span.kind,
                            span.span_id.clone(),
                            span.parent_span_id.clone(),
                        ));
                    }
                }
            }
        }
    }
    assert!(names.iter().any(|n| n == "GET /api/v1/store/{username}"), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("StorefrontService/GetStorefront")),
        "{names:?}"
    );
    // One trace, hop by hop: the facade's request (server) → its call to storefront (client,
    // retries included) → storefront's handling of it (server).
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    let find = |pick: &dyn Fn(&str, i32) -> bool| {
        spans
            .iter()
            .find(|(name, kind, _, _)| pick(name, *kind))
            .unwrap_or_else(|| panic!("{spans:?}"))
            .clone()
    };
    let http = find(&|name, kind| name == "GET /api/v1/store/{username}" && kind == SERVER);
    let client = find(&|name, kind| name == "storefront/GetStorefront" && kind == CLIENT);
    let served = find(&|name, kind| name.ends_with("StorefrontService/GetStorefront") && kind == SERVER);
    assert_eq!(client.3, http.2, "the call is the facade request's child");
    assert_eq!(served.3, client.2, "storefront's span is the call's child");
    drop(received);
    platform.shutdown().await.unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
