//! Storefront routes: creators, products, the public storefront.
use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue},
    response::Response,
};
use thali_platform::cache::Source;
use thali_proto::storefront::v1 as pb;

use super::{created, http_cache, idempotency_key, missing};
use crate::{
    FacadeState,
    dto::{self, CreateCreator, CreateProduct, ListProductsQuery, UpdateProduct, UpdateProfile},
    edge::EdgeMiss,
    middleware::{ApiJson, ApiPath, ApiQuery, Caller, request_as},
    problem::Problem,
};

/// Create a creator page; the caller becomes its owner.
#[utoipa::path(
    post, path = "/api/v1/creators", tag = "creators",
    request_body = CreateCreator,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,200}$", description = "Same key and body: the same creator is returned")),
    responses((status = 201, description = "Created", body = dto::Creator)),
    security(("bearer" = []))
)]
pub async fn create_creator(
    State(state): State<FacadeState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateCreator>,
) -> Result<Response, Problem> {
    let req = pb::CreateCreatorRequest {
        username: body.username,
        display_name: body.display_name,
        bio: body.bio,
        idempotency_key: idempotency_key(&headers)?,
    };
    let creator = state
        .storefront
        .call(caller.request(req), |mut c, r| async move { c.create_creator(r).await })
        .await?
        .into_inner()
        .creator;
    let creator = dto::Creator::from(creator.ok_or_else(|| missing("creator"))?);
    Ok(created(format!("/api/v1/creators/{}", creator.username), creator))
}

/// A creator's profile.
#[utoipa::path(
    get, path = "/api/v1/creators/{username}", tag = "creators",
    params(("username" = String, Path)),
    responses((status = 200, description = "The creator", body = dto::Creator))
)]
pub async fn get_creator(
    State(state): State<FacadeState>,
    ApiPath(username): ApiPath<String>,
) -> Result<Json<dto::Creator>, Problem> {
    let res = state
        .storefront
        .call(pb::GetCreatorRequest { username }, |mut c, r| async move {
            c.get_creator(r).await
        })
        .await?;
    Ok(Json(res.into_inner().creator.ok_or_else(|| missing("creator"))?.into()))
}

/// Change a creator's display name or bio (owner only).
#[utoipa::path(
    patch, path = "/api/v1/creators/{username}", tag = "creators",
    params(("username" = String, Path)),
    request_body = UpdateProfile,
    responses((status = 200, description = "The updated creator", body = dto::Creator)),
    security(("bearer" = []))
)]
pub async fn update_profile(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(username): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateProfile>,
) -> Result<Json<dto::Creator>, Problem> {
    let req = pb::UpdateProfileRequest {
        username,
        display_name: body.display_name,
        bio: body.bio,
    };
    let res = state
        .storefront
        .call(caller.request(req), |mut c, r| async move { c.update_profile(r).await })
        .await?;
    Ok(Json(res.into_inner().creator.ok_or_else(|| missing("creator"))?.into()))
}

/// Add a product to a creator page (owner only).
#[utoipa::path(
    post, path = "/api/v1/creators/{username}/products", tag = "products",
    params(
        ("username" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,200}$", description = "Same key and body: the same product is returned"),
    ),
    request_body = CreateProduct,
    responses((status = 201, description = "Created", body = dto::Product)),
    security(("bearer" = []))
)]
pub async fn create_product(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(username): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateProduct>,
) -> Result<Response, Problem> {
    let req = pb::CreateProductRequest {
        username,
        title: body.title,
        description: body.description,
        price: Some(body.price.into()),
        stock: body.stock,
        active: body.active,
        idempotency_key: idempotency_key(&headers)?,
    };
    let product = state
        .storefront
        .call(caller.request(req), |mut c, r| async move { c.create_product(r).await })
        .await?
        .into_inner()
        .product;
    let product = dto::Product::from(product.ok_or_else(|| missing("product"))?);
    Ok(created(format!("/api/v1/products/{}", product.id), product))
}

/// A creator's products, newest first; the owner also sees inactive ones.
#[utoipa::path(
    get, path = "/api/v1/creators/{username}/products", tag = "products",
    params(("username" = String, Path), ListProductsQuery),
    responses((status = 200, description = "One page of products", body = dto::ProductPage))
)]
pub async fn list_products(
    State(state): State<FacadeState>,
    caller: Option<Caller>,
    ApiPath(username): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListProductsQuery>,
) -> Result<Json<dto::ProductPage>, Problem> {
    let req = pb::ListProductsRequest {
        username,
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let req = request_as(&caller, req);
    let page = state
        .storefront
        .call(req, |mut c, r| async move { c.list_products(r).await })
        .await?
        .into_inner();
    Ok(Json(dto::ProductPage {
        products: page.products.into_iter().map(Into::into).collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    }))
}

/// Change a product (owner only). `"stock": null` makes stock unlimited.
#[utoipa::path(
    patch, path = "/api/v1/products/{id}", tag = "products",
    params(("id" = String, Path, format = Uuid)),
    request_body = UpdateProduct,
    responses((status = 200, description = "The updated product", body = dto::Product)),
    security(("bearer" = []))
)]
pub async fn update_product(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateProduct>,
) -> Result<Json<dto::Product>, Problem> {
    let req = pb::UpdateProductRequest {
        product_id: id,
        title: body.title,
        description: body.description,
        price: body.price.map(Into::into),
        active: body.active,
        stock: body.stock.map(|quantity| pb::StockUpdate { quantity }),
    };
    let res = state
        .storefront
        .call(caller.request(req), |mut c, r| async move { c.update_product(r).await })
        .await?;
    Ok(Json(res.into_inner().product.ok_or_else(|| missing("product"))?.into()))
}

/// Archive a product: it leaves the storefront for good (owner only).
#[utoipa::path(
    post, path = "/api/v1/products/{id}/archive", tag = "products",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The archived product", body = dto::Product)),
    security(("bearer" = []))
)]
pub async fn archive_product(
    State(state): State<FacadeState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dto::Product>, Problem> {
    let req = pb::ArchiveProductRequest { product_id: id };
    let res = state
        .storefront
        .call(
            caller.request(req),
            |mut c, r| async move { c.archive_product(r).await },
        )
        .await?;
    Ok(Json(res.into_inner().product.ok_or_else(|| missing("product"))?.into()))
}

/// The public storefront of a creator: profile and products on sale. Anonymous answers are
/// cacheable for 60 s and carry a strong `ETag`; `If-None-Match` with it answers 304.
/// Answers to signed-in callers are `no-store`.
#[utoipa::path(
    get, path = "/api/v1/store/{username}", tag = "storefront",
    params(
        ("username" = String, Path),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The storefront", body = dto::Storefront,
         headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified since the ETag sent", headers(("ETag" = String))),
    )
)]
pub async fn get_storefront(
    State(state): State<FacadeState>,
    caller: Option<Caller>,
    headers: HeaderMap,
    ApiPath(username): ApiPath<String>,
) -> Result<Response, Problem> {
    if caller.is_none()
        && let Some(edge) = &state.edge
    {
        // Only a miss pays for a gRPC client; a hit is a map lookup.
        let for_miss = state.clone();
        let owned = username.clone();
        let loaded = edge
            .cache
            .get_or_load(&edge.key(&username), move || async move {
                let req = tonic::Request::new(pb::GetStorefrontRequest { username: owned });
                let res = for_miss
                    .storefront
                    .call(req, |mut c, r| async move { c.get_storefront(r).await })
                    .await
                    .map_err(|s| EdgeMiss::Problem(s.into()))?;
                let body = storefront_body(res.into_inner()).map_err(EdgeMiss::Problem)?;
                let bytes = serde_json::to_vec(&body).map_err(|_| EdgeMiss::Problem(missing("storefront json")))?;
                if body.stale {
                    Err(EdgeMiss::Uncacheable(bytes))
                } else {
                    Ok(http_cache::with_etag(bytes))
                }
            })
            .await;
        return match loaded {
            Ok(cached) if cached.source == Source::Stale => {
                // The storefront cannot be reached: the last copy, marked stale (ADR 0010).
                let mut body: serde_json::Value = serde_json::from_slice(http_cache::untagged(&cached.bytes))
                    .map_err(|_| missing("cached storefront json"))?;
                body["stale"] = serde_json::Value::Bool(true);
                let bytes = serde_json::to_vec(&body).map_err(|_| missing("storefront json"))?;
                Ok(http_cache::conditional(
                    &headers,
                    bytes,
                    HeaderValue::from_static("no-cache"),
                ))
            }
            Ok(cached) => Ok(http_cache::conditional_tagged(
                &headers,
                cached.bytes,
                edge.fresh_cache_control(),
            )),
            Err(EdgeMiss::Uncacheable(bytes)) => Ok(http_cache::conditional(
                &headers,
                bytes,
                HeaderValue::from_static("no-cache"),
            )),
            Err(EdgeMiss::Problem(mut problem)) => {
                // The load may have run in another request's trace: this answer is this one's.
                problem.trace_id = thali_platform::telemetry::current_trace_id();
                Err(problem)
            }
        };
    }
    let req = request_as(&caller, pb::GetStorefrontRequest { username });
    let body = storefront_body(
        state
            .storefront
            .call(req, |mut c, r| async move { c.get_storefront(r).await })
            .await?
            .into_inner(),
    )?;
    let bytes = serde_json::to_vec(&body).map_err(|_| missing("storefront json"))?;
    let cache_control = if caller.is_some() {
        "no-store"
    } else if body.stale {
        "no-cache"
    } else {
        "public, max-age=60"
    };
    Ok(http_cache::conditional(
        &headers,
        bytes,
        HeaderValue::from_static(cache_control),
    ))
}

fn storefront_body(res: pb::GetStorefrontResponse) -> Result<dto::Storefront, Problem> {
    Ok(dto::Storefront {
        creator: res.creator.ok_or_else(|| missing("creator"))?.into(),
        products: res.products.into_iter().map(Into::into).collect(),
        stale: res.stale,
    })
}
