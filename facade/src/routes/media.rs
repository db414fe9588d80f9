//! Media (ADR 0033): uploads go to the storefront, which decides the type from the bytes and
//! stores them; reading is only through expiring, signed links. The embedded store's links are
//! served here, at `GET /media/{key}`.
use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use thali_platform::objects::LinkRefused;
use thali_proto::storefront::v1::{self as pb, MediaUpload, media_target::Target};

use crate::{FacadeState, dto, middleware::Caller, problem::Problem};

/// Chunks the body is sent to the storefront in (well under any gRPC message limit).
const CHUNK: usize = 256 * 1024;

/// The HTTP status an upload refusal deserves, by its code; the rest as gRPC maps them.
fn upload_problem(status: tonic::Status) -> Problem {
    let problem = Problem::from(status);
    let http = match problem.code.as_str() {
        "UNSUPPORTED_MEDIA_TYPE" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "IMAGE_MALFORMED" | "IMAGE_TOO_LARGE" => StatusCode::UNPROCESSABLE_ENTITY,
        "UPLOAD_TOO_LARGE" => StatusCode::PAYLOAD_TOO_LARGE,
        _ => return problem,
    };
    Problem::new(http, &problem.code, problem.detail.clone().unwrap_or_default())
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "UPLOAD_TOO_LARGE",
            "the upload is over the platform's limit (THALI_MAX_UPLOAD_BYTES)",
        )
    } else {
        Problem::new(StatusCode::BAD_REQUEST, "BODY_UNREADABLE", rejection.body_text())
    }
}

async fn upload(
    state: &FacadeState,
    caller: &Caller,
    headers: &HeaderMap,
    target: Target,
    body: Result<Bytes, BytesRejection>,
) -> Result<dto::Image, Problem> {
    // A form upload would arrive wrapped in its boundaries: say what to send instead.
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("multipart/"))
    {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the image itself as the request body, not a multipart form",
        ));
    }
    let bytes = body.map_err(body_problem)?;
    let upload = MediaUpload {
        target: pb::MediaTarget { target: Some(target) },
        bytes,
    };
    let answer = state
        .storefront
        .call(
            caller.request(upload),
            |mut c, r: tonic::Request<MediaUpload>| async move {
                let (metadata, extensions, upload) = r.into_parts();
                let stream = tokio_stream::iter(upload.messages(CHUNK));
                c.upload_media(tonic::Request::from_parts(metadata, extensions, stream))
                    .await
            },
        )
        .await
        .map_err(upload_problem)?
        .into_inner();
    answer.image.map(dto::Image::from).ok_or_else(|| {
        tracing::error!("an upload answered without its image");
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_INCOMPLETE",
            "the upload's answer is incomplete",
        )
    })
}

/// Adds an image to a product (its store's owner). The body is the image itself (JPEG, PNG,
/// WebP or AVIF, decided from the bytes), at most `THALI_MAX_UPLOAD_BYTES` (5 MiB by default).
#[utoipa::path(
    post, path = "/api/v1/products/{id}/images", tag = "storefront",
    params(("id" = String, Path, description = "The product")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "The image's bytes"),
    responses(
        (status = 201, description = "Stored; the link expires at url_expire_time", body = dto::Image),
        (status = 403, description = "Not the store's owner (NOT_OWNER)", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 413, description = "Over the upload limit (UPLOAD_TOO_LARGE)", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 415, description = "Not a JPEG, PNG, WebP or AVIF image, or a multipart form (UNSUPPORTED_MEDIA_TYPE)",
         body = crate::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Truncated or malformed (IMAGE_MALFORMED), or too many pixels (IMAGE_TOO_LARGE)",
         body = crate::problem::ProblemDetails, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn add_product_image(
    State(state): State<FacadeState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<dto::Image>), Problem> {
    let image = upload(&state, &caller, &headers, Target::ProductId(id), body).await?;
    Ok((StatusCode::CREATED, Json(image)))
}

/// Sets the creator's avatar (the store's owner), replacing the previous one. The body is the
/// image itself, as for product images.
#[utoipa::path(
    put, path = "/api/v1/creators/{username}/avatar", tag = "storefront",
    params(("username" = String, Path, description = "The creator")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "The image's bytes"),
    responses(
        (status = 200, description = "Stored; the link expires at url_expire_time", body = dto::Image),
        (status = 403, description = "Not the store's owner (NOT_OWNER)", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 413, description = "Over the upload limit (UPLOAD_TOO_LARGE)", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
        (status = 415, description = "Not a JPEG, PNG, WebP or AVIF image (UNSUPPORTED_MEDIA_TYPE)",
         body = crate::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Truncated or malformed, or too many pixels", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn set_avatar(
    State(state): State<FacadeState>,
    caller: Caller,
    Path(username): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<dto::Image>, Problem> {
    Ok(Json(
        upload(&state, &caller, &headers, Target::AvatarOf(username), body).await?,
    ))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct LinkQuery {
    /// When the link stops working (seconds since the epoch).
    pub exp: Option<i64>,
    /// The link's signature.
    pub sig: Option<String>,
}

/// Reads an object of the embedded store through a link from an answer. Without a valid,
/// unexpired signature: 403.
#[utoipa::path(
    get, path = "/media/{key}", tag = "storefront",
    params(("key" = String, Path, description = "The object's key"), LinkQuery),
    responses(
        (status = 200, description = "The image", content_type = "image/*"),
        (status = 403, description = "No valid signature, or the link expired (LINK_INVALID, LINK_EXPIRED)",
         body = crate::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such object", body = crate::problem::ProblemDetails,
         content_type = "application/problem+json"),
    )
)]
pub async fn read(
    State(state): State<FacadeState>,
    Path(key): Path<String>,
    Query(link): Query<LinkQuery>,
) -> Result<Response, Problem> {
    let Some(store) = state.media.as_ref() else {
        return Err(Problem::not_found("this platform keeps no media here"));
    };
    let (Some(exp), Some(sig)) = (link.exp, link.sig) else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "LINK_INVALID",
            "media is read only through signed links",
        ));
    };
    match store.verify(&key, exp, &sig, chrono::Utc::now()) {
        Ok(()) => {}
        Err(LinkRefused::Expired) => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "LINK_EXPIRED",
                "the link has expired; read the page again for a new one",
            ));
        }
        Err(LinkRefused::BadKey | LinkRefused::BadSignature) => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "LINK_INVALID",
                "the link's signature is not valid",
            ));
        }
    }
    let content_type = thali_platform::objects::key_content_type(&key).expect("a verified key has a type");
    let bytes = store
        .read(&key)
        .await
        .map_err(|e| {
            tracing::warn!(%key, error = %e, "a media object could not be read");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "MEDIA_UNAVAILABLE",
                "the media cannot be read now",
            )
            .with_retry_after(1)
        })?
        .ok_or_else(|| Problem::not_found("no such media"))?;
    let mut response = bytes.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The key is ours (hex and a known extension): safe in the header as it is.
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{key}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // Cacheable by the browser until the link expires, by nobody else.
    let max_age = (exp - chrono::Utc::now().timestamp()).max(0);
    if let Ok(v) = HeaderValue::from_str(&format!("private, max-age={max_age}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    Ok(response)
}
