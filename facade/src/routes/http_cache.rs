//! HTTP caching of JSON answers: a strong `ETag` (SHA-256 of the body), `Cache-Control`, and
//! 304 Not Modified when the client already holds the same body.
use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};

/// A strong ETag for `body`: the first 128 bits of its SHA-256, quoted.
pub fn etag(body: &[u8]) -> String {
    format!("\"{}\"", &thali_platform::idempotency::sha256_hex(body)[..32])
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, RFC 9110 §13.1.2).
fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .any(|candidate| candidate.trim().trim_start_matches("W/") == etag)
}

/// The body of a tagged answer (after its ETag).
pub fn untagged(tagged: &[u8]) -> &[u8] {
    &tagged[34..]
}

/// `body` JSON-escaped as every answer is (`crate::middleware::escape_json_bytes`), with its
/// ETag in front (`"…"` is 34 bytes): a cached answer needs no hashing and no escaping pass.
pub fn with_etag(body: Vec<u8>) -> Vec<u8> {
    let body = crate::middleware::escape_json_bytes(&body).unwrap_or(body);
    let mut out = etag(&body).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// As [`conditional`], for bytes made by [`with_etag`], without copying the body or the tag;
/// the answer is marked as escaped already.
pub fn conditional_tagged(request: &HeaderMap, tagged: std::sync::Arc<[u8]>, cache_control: HeaderValue) -> Response {
    let whole = axum::body::Bytes::from_owner(tagged);
    let tag = HeaderValue::from_maybe_shared(whole.slice(..34)).expect("a quoted hex ETag is a valid header value");
    let mut response = respond(request, tag, whole.slice(34..), cache_control);
    response.extensions_mut().insert(crate::middleware::JsonEscaped);
    response
}

/// 200 with `body` as JSON, or 304 when `request` already holds it; both with `ETag` and
/// `Cache-Control`.
pub fn conditional(request: &HeaderMap, body: Vec<u8>, cache_control: HeaderValue) -> Response {
    let tag = HeaderValue::from_str(&etag(&body)).expect("a quoted hex ETag is a valid header value");
    respond(request, tag, axum::body::Bytes::from(body), cache_control)
}

fn respond(request: &HeaderMap, tag: HeaderValue, body: axum::body::Bytes, cache_control: HeaderValue) -> Response {
    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches(v, tag.to_str().expect("ASCII")));
    let mut response = if not_modified {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(body));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, tag);
    headers.insert(header::CACHE_CONTROL, cache_control);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let tag = etag(b"{}");
        assert!(matches(&tag, &tag));
        assert!(matches(&format!("\"other\", W/{tag}"), &tag));
        assert!(matches("*", &tag));
        assert!(!matches("\"other\"", &tag));
    }

    #[test]
    fn the_same_body_gets_304_another_gets_200() {
        let mut request = HeaderMap::new();
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&etag(b"{\"a\":1}")).unwrap(),
        );
        assert_eq!(
            conditional(
                &request,
                b"{\"a\":1}".to_vec(),
                HeaderValue::from_static("public, max-age=60")
            )
            .status(),
            StatusCode::NOT_MODIFIED
        );
        let changed = conditional(
            &request,
            b"{\"a\":2}".to_vec(),
            HeaderValue::from_static("public, max-age=60"),
        );
        assert_eq!(changed.status(), StatusCode::OK);
        assert_eq!(changed.headers()[header::CACHE_CONTROL], "public, max-age=60");
    }
}
