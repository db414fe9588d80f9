//! The tonic implementation of `thali.storefront.v1.StorefrontService`: proto ↔ domain, the
//! caller from the platform auth layer, and the one mapping of domain errors to `Status`.
use std::{sync::Arc, time::Duration};

use prost::Message;

use thali_platform::{
    audit::access_denied,
    auth::Principal,
    cache::{CacheKey, LoadError, Source, TwoLevelCache},
    errors,
    objects::ObjectStore,
    server::{ServiceCaller, principal},
};
use thali_proto::{common::v1 as common, storefront::v1 as pb};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        self, Creator, NewCreator, NewProduct, Product, ProductChanges, ProfileChanges, Reservation,
        ReservationRequest, ReservationState, StorefrontError,
    },
    store::{Idempotency, MediaFor, ReservationChange, StorefrontStore, media_row},
    workers::ReadCounter,
};

/// The storefront gRPC service.
#[derive(Clone)]
pub struct StorefrontGrpc {
    store: StorefrontStore,
    cache: Arc<TwoLevelCache>,
    tenant: String,
    reads: Arc<ReadCounter>,
    /// Where uploaded media goes (ADR 0033); None: uploads are refused, reads carry no images.
    media: Option<Media>,
}

/// The object store and the largest upload it takes.
#[derive(Clone)]
pub struct Media {
    pub objects: Arc<dyn ObjectStore>,
    pub max_upload_bytes: usize,
}

/// Links to `row`'s object made at `now`.
fn image_pb(objects: &dyn ObjectStore, row: &media_row::Model, now: chrono::DateTime<chrono::Utc>) -> pb::Image {
    pb::Image {
        id: row.object_key.clone(),
        url: objects.link(&row.object_key, now),
        content_type: row.content_type.clone(),
        width: row.width,
        height: row.height,
        size_bytes: row.size_bytes,
        url_expire_time: Some(timestamp(thali_platform::objects::link_expiry(now))),
    }
}

impl StorefrontGrpc {
    pub fn new(store: StorefrontStore, cache: Arc<TwoLevelCache>, tenant: String, reads: Arc<ReadCounter>) -> Self {
        Self {
            store,
            cache,
            tenant,
            reads,
            media: None,
        }
    }

    /// Takes uploads into `media`.
    pub fn with_media(&mut self, media: Media) {
        self.media = Some(media);
    }

    /// Fills the images of `products` (and `creator`'s avatar) with links made now.
    async fn attach_media(
        store: &StorefrontStore,
        media: Option<&Media>,
        creator: Option<&mut pb::Creator>,
        products: &mut [pb::Product],
    ) -> Result<(), StorefrontError> {
        let Some(media) = media else {
            return Ok(());
        };
        let now = chrono::Utc::now();
        if let Some(creator) = creator
            && let Ok(id) = Uuid::parse_str(&creator.id)
        {
            creator.avatar = store
                .avatar(id)
                .await?
                .map(|row| image_pb(media.objects.as_ref(), &row, now));
        }
        let ids: Vec<Uuid> = products.iter().filter_map(|p| Uuid::parse_str(&p.id).ok()).collect();
        let mut images = store.product_images(&ids).await?;
        for p in products.iter_mut() {
            if let Some(rows) = Uuid::parse_str(&p.id).ok().and_then(|id| images.remove(&id)) {
                p.images = rows.iter().map(|r| image_pb(media.objects.as_ref(), r, now)).collect();
            }
        }
        Ok(())
    }

    /// `t:{tenant}:v{n}:store:{username}`.
    fn storefront_key(&self, username: &str) -> CacheKey {
        CacheKey::storefront(&self.tenant, username)
    }

    /// The storefront of `username`, through the cache (encoded, with the owner's id).
    pub async fn cached_storefront(
        &self,
        username: &str,
    ) -> Result<(pb::GetStorefrontResponse, Source), StorefrontError> {
        let store = self.store.clone();
        let media = self.media.clone();
        let owned = username.to_owned();
        let cached = self
            .cache
            .get_or_load(&self.storefront_key(username), move || async move {
                let (creator, products) = store.storefront(&owned).await?;
                let mut full = pb::GetStorefrontResponse {
                    creator: Some(creator_pb(creator)),
                    products: products.into_iter().map(product_pb).collect(),
                    stale: false,
                };
                // The links in a cached page outlive its cache life (ADR 0033).
                Self::attach_media(&store, media.as_ref(), full.creator.as_mut(), &mut full.products).await?;
                Ok::<_, StorefrontError>(full.encode_to_vec())
            })
            .await?;
        let decoded = pb::GetStorefrontResponse::decode(&cached.bytes[..])
            .map_err(|e| StorefrontError::Internal(format!("cached storefront does not decode: {e}")))?;
        Ok((decoded, cached.source))
    }

    /// Cache keys dropped from now on.
    pub fn invalidations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.cache.invalidations()
    }

    /// Whether the cache's Redis answers (None without Redis).
    pub fn redis_up(&self) -> Option<bool> {
        self.cache.redis_up()
    }

    /// Drops the cached storefront of a reservation's page when its stock moved.
    async fn settled(&self, change: ReservationChange) -> Reservation {
        if change.stock_changed {
            self.invalidate(&change.reservation.username).await;
        }
        change.reservation
    }

    /// Drops the cached storefront of `username` (after a committed write elsewhere: the
    /// expiry sweep).
    pub async fn drop_storefront(&self, username: &str) {
        self.invalidate(username).await;
    }

    /// Drops the cached storefront of `username` (after a committed write).
    /// Runs in a task of its own, so a caller that goes away after the commit cannot skip it.
    async fn invalidate(&self, username: &str) {
        let cache = self.cache.clone();
        let key = self.storefront_key(username);
        let _ = tokio::spawn(async move { cache.invalidate(&key).await }).await;
    }
}

impl LoadError for StorefrontError {
    fn is_outage(&self) -> bool {
        matches!(self, StorefrontError::Unavailable)
    }
    fn timed_out() -> Self {
        StorefrontError::Unavailable
    }
}

impl From<StorefrontError> for Status {
    fn from(err: StorefrontError) -> Self {
        match err {
            StorefrontError::Invalid(violations) => errors::invalid_argument(&violations),
            StorefrontError::Unauthenticated => {
                errors::with_reason(Code::Unauthenticated, "UNAUTHENTICATED", err.to_string())
            }
            StorefrontError::NotOwner => errors::with_reason(Code::PermissionDenied, "NOT_OWNER", err.to_string()),
            StorefrontError::RoleRequired => {
                errors::with_reason(Code::PermissionDenied, "CREATOR_ROLE_REQUIRED", err.to_string())
            }
            StorefrontError::UsernameTaken => {
                errors::with_reason(Code::AlreadyExists, "USERNAME_TAKEN", err.to_string())
            }
            StorefrontError::CreatorNotFound => {
                errors::with_reason(Code::NotFound, "CREATOR_NOT_FOUND", err.to_string())
            }
            StorefrontError::ProductNotFound => {
                errors::with_reason(Code::NotFound, "PRODUCT_NOT_FOUND", err.to_string())
            }
            StorefrontError::ProductArchived => {
                errors::with_reason(Code::FailedPrecondition, "PRODUCT_ARCHIVED", err.to_string())
            }
            StorefrontError::IdempotencyKeyReused => {
                errors::with_reason(Code::Aborted, "IDEMPOTENCY_KEY_REUSED", err.to_string())
            }
            StorefrontError::OutOfStock { product_id, available } => errors::with_metadata(
                Code::FailedPrecondition,
                "OUT_OF_STOCK",
                err.to_string(),
                &[
                    ("product_id", product_id.to_string()),
                    ("available", available.to_string()),
                ],
            ),
            StorefrontError::ProductUnavailable(product_id) => errors::with_metadata(
                Code::FailedPrecondition,
                "PRODUCT_UNAVAILABLE",
                err.to_string(),
                &[("product_id", product_id.to_string())],
            ),
            StorefrontError::MixedCurrencies => {
                errors::with_reason(Code::InvalidArgument, "MIXED_CURRENCIES", err.to_string())
            }
            StorefrontError::ReservationNotFound => {
                errors::with_reason(Code::NotFound, "RESERVATION_NOT_FOUND", err.to_string())
            }
            StorefrontError::ReservationReleased => {
                errors::with_reason(Code::FailedPrecondition, "RESERVATION_RELEASED", err.to_string())
            }
            StorefrontError::ReservationCommitted => {
                errors::with_reason(Code::FailedPrecondition, "RESERVATION_COMMITTED", err.to_string())
            }
            StorefrontError::ServiceOnly => {
                errors::with_reason(Code::PermissionDenied, "SERVICE_ONLY", err.to_string())
            }
            StorefrontError::Image(domain::media::ImageError::Unsupported) => {
                errors::with_reason(Code::InvalidArgument, "UNSUPPORTED_MEDIA_TYPE", err.to_string())
            }
            StorefrontError::Image(domain::media::ImageError::Malformed(_)) => {
                errors::with_reason(Code::InvalidArgument, "IMAGE_MALFORMED", err.to_string())
            }
            StorefrontError::Image(domain::media::ImageError::Dimensions { .. }) => {
                errors::with_reason(Code::InvalidArgument, "IMAGE_TOO_LARGE", err.to_string())
            }
            StorefrontError::UploadTooLarge(_) => {
                errors::with_reason(Code::InvalidArgument, "UPLOAD_TOO_LARGE", err.to_string())
            }
            StorefrontError::MediaUnavailable => {
                errors::unavailable("MEDIA_UNAVAILABLE", err.to_string(), Duration::from_secs(2))
            }
            StorefrontError::Unavailable => {
                errors::unavailable("DATABASE_UNAVAILABLE", err.to_string(), Duration::from_secs(2))
            }
            StorefrontError::Internal(cause) => errors::internal(&cause),
        }
    }
}

fn caller<T>(request: &Request<T>) -> Result<Principal, StorefrontError> {
    principal(request).cloned().ok_or(StorefrontError::Unauthenticated)
}

/// Records a refused write (not the owner, not a creator) as a security event, then passes the
/// error on.
fn audited<T>(who: &Principal, target: &str, result: Result<T, StorefrontError>) -> Result<T, StorefrontError> {
    if let Err(e @ (StorefrontError::NotOwner | StorefrontError::RoleRequired)) = &result {
        access_denied(who, target, &e.to_string());
    }
    result
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn creator_pb(c: Creator) -> pb::Creator {
    pb::Creator {
        id: c.id.to_string(),
        username: c.username,
        display_name: c.display_name,
        bio: c.bio,
        owner_subject: c.owner_subject,
        create_time: Some(timestamp(c.created_at)),
        update_time: Some(timestamp(c.updated_at)),
        avatar: None,
    }
}

/// A creator as anyone may see it: the owning account is shown to the owner only.
fn public_creator_pb(c: Creator, viewer: Option<&str>) -> pb::Creator {
    let is_owner = viewer == Some(c.owner_subject.as_str());
    let mut out = creator_pb(c);
    if !is_owner {
        out.owner_subject.clear();
    }
    out
}

fn product_pb(p: Product) -> pb::Product {
    pb::Product {
        id: p.id.to_string(),
        creator_id: p.creator_id.to_string(),
        title: p.title,
        description: p.description,
        price: Some(common::Money {
            amount_minor: p.price.amount_minor,
            currency: p.price.currency,
        }),
        active: p.active,
        stock: p.stock,
        create_time: Some(timestamp(p.created_at)),
        update_time: Some(timestamp(p.updated_at)),
        archive_time: p.archived_at.map(timestamp),
        images: Vec::new(),
    }
}

fn money_pb(m: domain::Money) -> common::Money {
    common::Money {
        amount_minor: m.amount_minor,
        currency: m.currency,
    }
}

fn reservation_pb(r: Reservation) -> pb::Reservation {
    let state = match r.state {
        ReservationState::Held => pb::ReservationState::Held,
        ReservationState::Committed => pb::ReservationState::Committed,
        ReservationState::Released => pb::ReservationState::Released,
    };
    pb::Reservation {
        id: r.id.to_string(),
        creator_id: r.creator_id.to_string(),
        username: r.username,
        owner_subject: r.owner_subject,
        lines: r
            .lines
            .into_iter()
            .map(|l| pb::ReservedLine {
                product_id: l.product_id.to_string(),
                line_total: Some(money_pb(domain::Money {
                    amount_minor: l.total_minor(),
                    currency: l.unit_price.currency.clone(),
                })),
                title: l.title,
                quantity: l.quantity,
                unit_price: Some(money_pb(l.unit_price)),
            })
            .collect(),
        total: Some(money_pb(r.total)),
        state: state.into(),
        expire_time: Some(timestamp(r.expires_at)),
        create_time: Some(timestamp(r.created_at)),
        update_time: Some(timestamp(r.updated_at)),
    }
}

/// Stock is held only for another Thali service (payments, on a service token): a user or a
/// partner key holding units would take them off sale for everyone.
fn service_only<T>(request: &Request<T>) -> Result<(), StorefrontError> {
    match request.extensions().get::<ServiceCaller>() {
        Some(_) => Ok(()),
        None => {
            if let Some(who) = principal(request) {
                access_denied(who, "stock reservations", "only Thali services may hold stock");
            }
            Err(StorefrontError::ServiceOnly)
        }
    }
}

fn reservation_id(raw: &str) -> Result<Uuid, StorefrontError> {
    Uuid::parse_str(raw).map_err(|_| StorefrontError::invalid("reservation_id", "must be a UUID"))
}

/// Parses a product id; anything but a UUID cannot name a product.
fn product_id(raw: &str) -> Result<Uuid, StorefrontError> {
    Uuid::parse_str(raw).map_err(|_| StorefrontError::invalid("product_id", "must be a UUID"))
}

/// A username that breaks the rules cannot exist, so reads answer NOT_FOUND for it without a
/// query; writes validate it fully.
fn lookup_username(raw: &str) -> Result<&str, StorefrontError> {
    domain::check_username(raw)
        .map(|_| raw)
        .map_err(|_| StorefrontError::CreatorNotFound)
}

fn page_token(raw: &str) -> Result<Option<Uuid>, StorefrontError> {
    errors::parse_page_token(raw).map_err(|v| StorefrontError::Invalid(vec![v]))
}

#[tonic::async_trait]
impl pb::storefront_service_server::StorefrontService for StorefrontGrpc {
    async fn create_creator(
        &self,
        request: Request<pb::CreateCreatorRequest>,
    ) -> Result<Response<pb::CreateCreatorResponse>, Status> {
        let owner = caller(&request)?;
        if !domain::may_open_creator_page(&owner.roles) {
            return Err(
                audited(&owner, "creator page", Err::<(), _>(StorefrontError::RoleRequired))
                    .unwrap_err()
                    .into(),
            );
        }
        let req = request.into_inner();
        let new = NewCreator::parse(&req.username, &req.display_name, &req.bio)?;
        let idem = domain::parse_idempotency_key(&req.idempotency_key)?.map(|k| Idempotency::new(k, &new));
        let creator = self.store.create_creator(&owner.subject, &new, idem.as_ref()).await?;
        tracing::info!(creator_id = %creator.id, username = %creator.username, "creator created");
        Ok(Response::new(pb::CreateCreatorResponse {
            creator: Some(creator_pb(creator)),
        }))
    }

    async fn get_creator(
        &self,
        request: Request<pb::GetCreatorRequest>,
    ) -> Result<Response<pb::GetCreatorResponse>, Status> {
        let viewer = principal(&request).map(|p| p.subject.clone());
        // A Thali service (payments checking who owns a store) sees the owner; the public does not.
        let service = request.extensions().get::<ServiceCaller>().is_some() && viewer.is_none();
        let req = request.into_inner();
        let creator = self.store.creator(lookup_username(&req.username)?).await?;
        let mut creator = if service {
            creator_pb(creator)
        } else {
            public_creator_pb(creator, viewer.as_deref())
        };
        Self::attach_media(&self.store, self.media.as_ref(), Some(&mut creator), &mut []).await?;
        Ok(Response::new(pb::GetCreatorResponse { creator: Some(creator) }))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let changes = ProfileChanges::parse(req.display_name.as_deref(), req.bio.as_deref())?;
        let result = self
            .store
            .update_profile(&who.subject, lookup_username(&req.username)?, &changes)
            .await;
        let creator = audited(&who, &req.username, result)?;
        self.invalidate(&creator.username).await;
        Ok(Response::new(pb::UpdateProfileResponse {
            creator: Some(creator_pb(creator)),
        }))
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let new = NewProduct::parse(
            &req.title,
            &req.description,
            req.price.as_ref().map(|m| (m.amount_minor, m.currency.as_str())),
            req.stock,
            req.active,
        )?;
        let idem =
            domain::parse_idempotency_key(&req.idempotency_key)?.map(|k| Idempotency::new(k, &(&req.username, &new)));
        let result = self
            .store
            .create_product(&who.subject, lookup_username(&req.username)?, &new, idem.as_ref())
            .await;
        let product = audited(&who, &req.username, result)?;
        self.invalidate(&req.username).await;
        tracing::info!(product_id = %product.id, "product created");
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(product_pb(product)),
        }))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let id = product_id(&req.product_id)?;
        let changes = ProductChanges::parse(
            req.title.as_deref(),
            req.description.as_deref(),
            req.price.as_ref().map(|m| (m.amount_minor, m.currency.as_str())),
            req.active,
            req.stock.map(|s| s.quantity),
        )?;
        let (product, page) = audited(
            &who,
            &id.to_string(),
            self.store.update_product(&who.subject, id, &changes).await,
        )?;
        // The page read by the write's own transaction: no second query that could fail.
        self.invalidate(&page).await;
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(product_pb(product)),
        }))
    }

    async fn archive_product(
        &self,
        request: Request<pb::ArchiveProductRequest>,
    ) -> Result<Response<pb::ArchiveProductResponse>, Status> {
        let who = caller(&request)?;
        let id = product_id(&request.get_ref().product_id)?;
        let (product, page) = audited(
            &who,
            &id.to_string(),
            self.store.archive_product(&who.subject, id).await,
        )?;
        self.invalidate(&page).await;
        Ok(Response::new(pb::ArchiveProductResponse {
            product: Some(product_pb(product)),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let who = principal(&request).map(|p| p.subject.clone());
        let req = request.into_inner();
        let size = domain::page_size(req.page_size)?;
        let after = page_token(&req.page_token)?;
        let (products, next) = self
            .store
            .list_products(who.as_deref(), lookup_username(&req.username)?, size, after)
            .await?;
        let mut products: Vec<pb::Product> = products.into_iter().map(product_pb).collect();
        Self::attach_media(&self.store, self.media.as_ref(), None, &mut products).await?;
        Ok(Response::new(pb::ListProductsResponse {
            products,
            next_page_token: next.map(errors::page_token).unwrap_or_default(),
        }))
    }

    async fn get_storefront(
        &self,
        request: Request<pb::GetStorefrontRequest>,
    ) -> Result<Response<pb::GetStorefrontResponse>, Status> {
        let viewer = principal(&request).map(|p| p.subject.clone());
        let username = lookup_username(&request.get_ref().username)?;
        let (mut res, source) = self.cached_storefront(username).await?;
        self.reads.record(username);
        if let Some(creator) = res.creator.as_mut()
            && viewer.as_deref() != Some(creator.owner_subject.as_str())
        {
            creator.owner_subject.clear();
        }
        res.stale = source == Source::Stale;
        Ok(Response::new(res))
    }

    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        service_only(&request)?;
        let req = request.into_inner();
        let lines: Vec<(&str, i64)> = req.lines.iter().map(|l| (l.product_id.as_str(), l.quantity)).collect();
        let parsed = ReservationRequest::parse(&req.reservation_id, &req.username, &lines, req.hold_seconds)?;
        let change = self.store.reserve_stock(&parsed).await?;
        let reservation = self.settled(change).await;
        tracing::info!(reservation_id = %reservation.id, state = reservation.state.as_str(), "stock reserved");
        Ok(Response::new(pb::ReserveStockResponse {
            reservation: Some(reservation_pb(reservation)),
        }))
    }

    async fn commit_reservation(
        &self,
        request: Request<pb::CommitReservationRequest>,
    ) -> Result<Response<pb::CommitReservationResponse>, Status> {
        service_only(&request)?;
        let id = reservation_id(&request.get_ref().reservation_id)?;
        let reservation = self.settled(self.store.commit_reservation(id).await?).await;
        tracing::info!(reservation_id = %id, "reserved stock sold");
        Ok(Response::new(pb::CommitReservationResponse {
            reservation: Some(reservation_pb(reservation)),
        }))
    }

    async fn upload_media(
        &self,
        request: Request<tonic::Streaming<pb::UploadMediaRequest>>,
    ) -> Result<Response<pb::UploadMediaResponse>, Status> {
        use pb::{media_target::Target, upload_media_request::Part};
        let who = caller(&request)?;
        let Some(media) = self.media.clone() else {
            return Err(errors::with_reason(
                Code::FailedPrecondition,
                "MEDIA_NOT_CONFIGURED",
                "this storefront has no object store",
            ));
        };
        let mut parts = request.into_inner();
        let first = parts.message().await?.and_then(|m| m.part);
        let target = match first {
            Some(Part::Target(pb::MediaTarget {
                target: Some(Target::ProductId(id)),
            })) => MediaFor::Product {
                product_id: product_id(&id)?,
            },
            Some(Part::Target(pb::MediaTarget {
                target: Some(Target::AvatarOf(username)),
            })) => MediaFor::Avatar {
                username: lookup_username(&username)?.to_owned(),
            },
            _ => {
                return Err(
                    StorefrontError::invalid("target", "the first message names what the upload is for").into(),
                );
            }
        };
        let label = match &target {
            MediaFor::Product { product_id } => product_id.to_string(),
            MediaFor::Avatar { username } => username.clone(),
        };
        // Ownership first: nobody else's bytes are read.
        let place = audited(&who, &label, self.store.media_target(&who.subject, &target).await)?;
        let mut bytes = Vec::new();
        while let Some(message) = parts.message().await? {
            let Some(Part::Chunk(chunk)) = message.part else {
                return Err(StorefrontError::invalid("target", "only the first message names the target").into());
            };
            if bytes.len() + chunk.len() > media.max_upload_bytes {
                return Err(StorefrontError::UploadTooLarge(media.max_upload_bytes).into());
            }
            bytes.extend_from_slice(&chunk);
        }
        let image = domain::media::inspect(&bytes).map_err(StorefrontError::from)?;
        let key = thali_platform::objects::new_key(image.kind.extension());
        let size = bytes.len();
        media
            .objects
            .put(&key, image.kind.content_type(), bytes.into())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "an upload could not be stored");
                StorefrontError::MediaUnavailable
            })?;
        let now = chrono::Utc::now();
        let stored = match self.store.add_media(&who.subject, &place, &key, image, size, now).await {
            Ok(stored) => stored,
            Err(e) => {
                // No row names the object: it goes.
                let _ = media.objects.delete(&key).await;
                return Err(audited::<()>(&who, &label, Err(e)).unwrap_err().into());
            }
        };
        if let Some(old) = &stored.replaced
            && let Err(e) = media.objects.delete(old).await
        {
            tracing::warn!(key = %old, error = %e, "a replaced avatar's object was not deleted");
        }
        self.invalidate(&stored.username).await;
        tracing::info!(key = %key, content_type = image.kind.content_type(), size, "media stored");
        Ok(Response::new(pb::UploadMediaResponse {
            image: Some(image_pb(media.objects.as_ref(), &stored.row, now)),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        service_only(&request)?;
        let id = reservation_id(&request.get_ref().reservation_id)?;
        let reservation = self.settled(self.store.release_reservation(id).await?).await;
        tracing::info!(reservation_id = %id, "reserved stock released");
        Ok(Response::new(pb::ReleaseReservationResponse {
            reservation: Some(reservation_pb(reservation)),
        }))
    }
}

/// The event types storefront subscribes to.
pub const SUBSCRIBES_TO: &[&str] = &[thali_platform::privacy::ERASED];

#[tonic::async_trait]
impl thali_platform::events::Sink for StorefrontGrpc {
    /// An erased account's stores are erased (ADR 0032) and their cached pages dropped.
    async fn take(&self, event: thali_proto::events::v1::Event) -> Result<bool, Status> {
        use thali_proto::events::v1::event::Payload;
        let Some(Payload::AccountErased(p)) = &event.payload else {
            return Err(Status::invalid_argument("storefront takes account.erased only"));
        };
        let account = Uuid::parse_str(&p.account_id)
            .map_err(|_| Status::invalid_argument("account_erased.account_id is not a UUID"))?;
        let event_id = Uuid::parse_str(&event.id).map_err(|_| Status::invalid_argument("event.id is not a UUID"))?;
        let Some(erased) = self.store.erase_owner(event_id, account, chrono::Utc::now()).await? else {
            return Ok(false);
        };
        for name in &erased.usernames {
            self.invalidate(name).await;
        }
        // The rows are gone; the objects follow (an object left by a failure here is named by
        // no row and read by no link).
        if let Some(media) = &self.media {
            for key in &erased.objects {
                if let Err(e) = media.objects.delete(key).await {
                    tracing::warn!(%key, error = %e, "an erased store's object was not deleted");
                }
            }
        }
        Ok(true)
    }
}
