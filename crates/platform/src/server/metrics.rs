//! RED metrics per RPC: `rpc_server_call_duration_seconds{method, code}`. Outermost in the
//! stack, so calls refused by authentication or shed are counted too; a path no service
//! declares is counted as `unknown`, so probing cannot grow the registry.
use std::{
    collections::HashSet,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::Instant,
};

use prost::Message;

use tower::{Layer, Service};

/// Layer adding [`Metrics`] to a gRPC server.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metrics { inner }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
}

/// The gRPC code name of a response. A unary error is sent trailers-only, so its status is in
/// the headers; a response without one in the headers carries its status (OK for a unary call
/// that succeeded) in the trailers.
pub(crate) fn response_code<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok)
}

/// Every method path a Thali server can answer: the contracts, health and reflection.
fn known_methods() -> &'static HashSet<String> {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut known = HashSet::new();
        for set in [thali_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
            let set = prost_types::FileDescriptorSet::decode(set).expect("the embedded descriptor sets are valid");
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!("{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
        }
        for version in ["v1", "v1alpha"] {
            known.insert(format!(
                "grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
            ));
        }
        known
    })
}

/// The metrics label of a request path: the method, or `unknown`.
pub(crate) fn method_label(path: &str) -> String {
    let method = path.trim_start_matches('/');
    if known_methods().contains(method) {
        method.to_owned()
    } else {
        "unknown".to_owned()
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for Metrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => response_code(response),
                Err(_) => tonic::Code::Unknown,
            };
            let code = format!("{code:?}");
            metrics::histogram!("rpc_server_call_duration_seconds", "method" => method, "code" => code)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_declared_methods_are_labels() {
        assert_eq!(
            super::method_label("/thali.storefront.v1.StorefrontService/GetStorefront"),
            "thali.storefront.v1.StorefrontService/GetStorefront"
        );
        assert_eq!(
            super::method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(
            super::method_label("/thali.storefront.v1.StorefrontService/Nope"),
            "unknown"
        );
        assert_eq!(super::method_label("/x/../y"), "unknown");
    }
}
