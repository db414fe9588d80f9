//! RED metrics per RPC: `rpc_server_call_duration_seconds{method, code}`. Outermost in the
//! stack, so calls refused by authentication or shed are counted too; a path no service
//! declares is counted as `unknown`, so probing cannot grow the registry.
use std::{
    collections::HashMap,
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

/// The gRPC status codes, by number, as label values (tonic's names).
const CODES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// One method's histograms, one per code, registered on first use.
type Handles = [OnceLock<metrics::Histogram>; 17];

/// Every method path a Thali server can answer (the contracts, health and reflection) and
/// `unknown`, each with its histogram handles: a call looks its handle up instead of building
/// labels.
fn known_methods() -> &'static HashMap<&'static str, Handles> {
    static KNOWN: OnceLock<HashMap<&'static str, Handles>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        // Handles are kept: the recorder must be there before the first one is made (a handle
        // made without it would count nothing, forever).
        crate::telemetry::metrics_handle();
        let mut known: Vec<String> = Vec::new();
        for set in [thali_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
            let set = prost_types::FileDescriptorSet::decode(set).expect("the embedded descriptor sets are valid");
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.push(format!("{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
        }
        for version in ["v1", "v1alpha"] {
            known.push(format!(
                "grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
            ));
        }
        known.push("unknown".to_owned());
        // Leaked once: a fixed set of names that live as long as the process.
        known
            .into_iter()
            .map(|m| (&*Box::leak(m.into_boxed_str()), Default::default()))
            .collect()
    })
}

/// The metrics label of a request path: the method, or `unknown`.
pub(crate) fn method_label(path: &str) -> &'static str {
    let method = path.trim_start_matches('/');
    known_methods()
        .get_key_value(method)
        .map(|(name, _)| *name)
        .unwrap_or("unknown")
}

/// The duration histogram of `method` (a label from [`method_label`]) answering `code`.
fn histogram(method: &'static str, code: tonic::Code) -> metrics::Histogram {
    let index = usize::try_from(code as i32).unwrap_or(2).min(16);
    match known_methods().get(method) {
        Some(handles) => handles[index]
            .get_or_init(
                || metrics::histogram!("rpc_server_call_duration_seconds", "method" => method, "code" => CODES[index]),
            )
            .clone(),
        None => metrics::histogram!("rpc_server_call_duration_seconds", "method" => method, "code" => CODES[index]),
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
            histogram(method, code).record(started.elapsed().as_secs_f64());
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

    #[test]
    fn code_labels_are_tonics_names() {
        for n in 0..17 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(super::CODES[n as usize], format!("{code:?}"));
        }
    }
}
