//! JSON shapes of the REST API (snake_case, unknown fields refused) and their conversion from
//! the gRPC messages. No business rule lives here: the services validate.
pub mod booking;
pub mod payments;

use serde::{Deserialize, Deserializer, Serialize};
use thali_proto::{common::v1 as common, storefront::v1 as pb};
use utoipa::{
    IntoParams, ToSchema,
    openapi::{ObjectBuilder, Type},
};

// The schema states the service's rules (lengths, patterns, ranges) so clients and fuzzers know
// the contract; the storefront service enforces them. Line patterns: visible text, not blank;
// block patterns: no control characters but tab and newline.

fn currency_schema() -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("ISO 4217 alphabetic code"))
        .enum_values(Some(thali_platform::money::CURRENCIES.iter().copied()))
        .examples(["INR"])
        .build()
}

/// An amount of money in minor units (4900 = INR 49.00).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Amount in the currency's minor unit.
    #[schema(example = 4900, minimum = 1, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "integer")]
    pub amount_minor: i64,
    /// ISO 4217 code, upper case.
    #[schema(schema_with = currency_schema)]
    pub currency: String,
}

impl From<common::Money> for Money {
    fn from(m: common::Money) -> Self {
        Self {
            amount_minor: m.amount_minor,
            currency: m.currency,
        }
    }
}

impl From<Money> for common::Money {
    fn from(m: Money) -> Self {
        Self {
            amount_minor: m.amount_minor,
            currency: m.currency,
        }
    }
}

pub(crate) fn rfc3339(t: Option<prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// A creator's page.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Creator {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub bio: String,
    /// The owning account; shown to the owner only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_subject: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
    /// The creator's picture, when one was uploaded (public reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<Image>,
}

impl From<pb::Creator> for Creator {
    fn from(c: pb::Creator) -> Self {
        Self {
            id: c.id,
            username: c.username,
            display_name: c.display_name,
            bio: c.bio,
            owner_subject: Some(c.owner_subject).filter(|s| !s.is_empty()),
            created_at: rfc3339(c.create_time),
            updated_at: rfc3339(c.update_time),
            avatar: c.avatar.map(Into::into),
        }
    }
}

/// An uploaded image: read it through `url`, a signed link that works until `url_expire_time`
/// (ADR 0033). Relative links are on this API's origin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Image {
    pub id: String,
    pub url: String,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    pub size_bytes: i64,
    #[schema(format = DateTime)]
    pub url_expire_time: Option<String>,
}

impl From<pb::Image> for Image {
    fn from(i: pb::Image) -> Self {
        Self {
            id: i.id,
            url: i.url,
            content_type: i.content_type,
            width: i.width,
            height: i.height,
            size_bytes: i.size_bytes,
            url_expire_time: rfc3339(i.url_expire_time),
        }
    }
}

/// A product.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Product {
    pub id: String,
    pub creator_id: String,
    pub title: String,
    pub description: String,
    pub price: Option<Money>,
    /// Shown on the storefront.
    pub active: bool,
    /// Units left; null means unlimited.
    pub stock: Option<i64>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
    /// Set once archived.
    #[schema(format = DateTime)]
    pub archived_at: Option<String>,
    /// Its images, oldest first (public reads and lists).
    pub images: Vec<Image>,
}

impl From<pb::Product> for Product {
    fn from(p: pb::Product) -> Self {
        Self {
            id: p.id,
            creator_id: p.creator_id,
            title: p.title,
            description: p.description,
            price: p.price.map(Into::into),
            active: p.active,
            stock: p.stock,
            created_at: rfc3339(p.create_time),
            updated_at: rfc3339(p.update_time),
            archived_at: rfc3339(p.archive_time),
            images: p.images.into_iter().map(Into::into).collect(),
        }
    }
}

/// A public storefront: the profile and its products on sale.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Storefront {
    pub creator: Creator,
    pub products: Vec<Product>,
    /// True when the database did not answer and this is the last cached copy (minutes old at
    /// most).
    pub stale: bool,
}

/// A page of products.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProductPage {
    pub products: Vec<Product>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// Body of `POST /api/v1/creators`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCreator {
    /// 3-30 characters: a-z, 0-9, '_' and '-'. A few names (admin, api, www…) are reserved.
    #[schema(example = "chai_point", pattern = r"^[a-z0-9_-]{3,30}$")]
    pub username: String,
    #[schema(
        example = "Chai Point",
        min_length = 1,
        max_length = 80,
        pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x08\x0B-\x1F\x7F-\x9F]*$"
    )]
    pub display_name: String,
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*$")]
    pub bio: String,
}

/// Body of `PATCH /api/v1/creators/{username}`: absent fields are left unchanged.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    #[schema(
        min_length = 1,
        max_length = 80,
        pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x08\x0B-\x1F\x7F-\x9F]*$"
    )]
    pub display_name: Option<String>,
    #[schema(max_length = 1000, pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*$")]
    pub bio: Option<String>,
}

/// Body of `POST /api/v1/creators/{username}/products`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    #[schema(
        example = "Masala chai",
        min_length = 1,
        max_length = 120,
        pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x08\x0B-\x1F\x7F-\x9F]*$"
    )]
    pub title: String,
    #[serde(default)]
    #[schema(max_length = 5000, pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*$")]
    pub description: String,
    pub price: Money,
    /// Units for sale; absent or null means unlimited.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<i64>,
    /// Defaults to true.
    pub active: Option<bool>,
}

/// An integer as JSON Schema counts them: `1.0` is the integer 1.
pub(crate) fn integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(deserializer)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!(
            "expected a 64-bit integer, found {n}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(transparent)]
struct Integer(#[serde(deserialize_with = "integer")] i64);

pub(crate) fn optional_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Option::<Integer>::deserialize(deserializer).map(|o| o.map(|i| i.0))
}

/// A present field (even `null`) becomes `Some`, so absent and null differ.
fn present_optional_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<i64>>, D::Error> {
    optional_integer(deserializer).map(Some)
}

/// Body of `PATCH /api/v1/products/{id}`: absent fields are left unchanged; `"stock": null`
/// makes the stock unlimited.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    #[schema(
        min_length = 1,
        max_length = 120,
        pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x08\x0B-\x1F\x7F-\x9F]*$"
    )]
    pub title: Option<String>,
    #[schema(max_length = 5000, pattern = r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*$")]
    pub description: Option<String>,
    pub price: Option<Money>,
    pub active: Option<bool>,
    #[serde(default, deserialize_with = "present_optional_integer")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<Option<i64>>,
}

/// Query of `GET /api/v1/creators/{username}/products`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListProductsQuery {
    /// 1-100; 0 or absent means 50.
    #[param(minimum = 0, maximum = 100)]
    pub page_size: Option<i32>,
    /// From the previous page's `next_page_token`; empty or absent for the first page.
    #[param(pattern = r"^([A-Za-z0-9_-]{21}[AQgw])?$")]
    pub page_token: Option<String>,
}

/// Role of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Buyer,
    Creator,
    RestaurantOwner,
    Admin,
}

impl Role {
    pub fn from_pb(role: i32) -> Option<Self> {
        use thali_proto::identity::v1::Role as R;
        Some(match R::try_from(role).ok()? {
            R::Buyer => Role::Buyer,
            R::Creator => Role::Creator,
            R::RestaurantOwner => Role::RestaurantOwner,
            R::Admin => Role::Admin,
            R::Unspecified => return None,
        })
    }

    pub fn to_pb(self) -> thali_proto::identity::v1::Role {
        use thali_proto::identity::v1::Role as R;
        match self {
            Role::Buyer => R::Buyer,
            Role::Creator => R::Creator,
            Role::RestaurantOwner => R::RestaurantOwner,
            Role::Admin => R::Admin,
        }
    }
}

/// An account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub role: Option<Role>,
    /// `active`, `locked`, `disabled` or `erased`.
    pub status: String,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// When the owner confirmed the address; absent until then.
    #[schema(format = DateTime)]
    pub email_verified_at: Option<String>,
}

impl From<thali_proto::identity::v1::Account> for Account {
    fn from(a: thali_proto::identity::v1::Account) -> Self {
        use thali_proto::identity::v1::AccountStatus as S;
        let status = match S::try_from(a.status).unwrap_or(S::Unspecified) {
            S::Active => "active",
            S::Locked => "locked",
            S::Disabled => "disabled",
            S::Erased => "erased",
            S::Unspecified => "unknown",
        };
        Self {
            id: a.id,
            email: a.email,
            display_name: a.display_name,
            role: Role::from_pb(a.role),
            status: status.to_owned(),
            created_at: rfc3339(a.create_time),
            email_verified_at: rfc3339(a.email_verify_time),
        }
    }
}

/// Body of `POST /api/v1/auth/verify-email`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmail {
    /// The code from the verification email.
    #[schema(max_length = 200)]
    pub token: String,
}

/// Body of `POST /api/v1/auth/password-reset`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    #[schema(example = "asha@example.com", max_length = 254)]
    pub email: String,
}

/// Body of `POST /api/v1/auth/password-reset/confirm`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirm {
    /// The code from the reset email.
    #[schema(max_length = 200)]
    pub token: String,
    /// 12-128 characters.
    #[schema(min_length = 12, max_length = 128)]
    pub new_password: String,
}

/// The answer to a reset request: the same whether or not the address has an account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Accepted {
    pub status: String,
}

/// Body of `POST /api/v1/auth/register`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    #[schema(example = "asha@example.com", max_length = 254)]
    pub email: String,
    /// 12 to 128 characters.
    #[schema(min_length = 12, max_length = 128)]
    pub password: String,
    #[schema(example = "Asha", min_length = 1, max_length = 80)]
    pub display_name: String,
    /// Admins are made by an operator (`thali users create --admin`) or by another admin
    /// (`PUT /api/v1/admin/accounts/{id}/role`).
    pub role: RegisterRole,
}

/// The roles a person may choose when registering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegisterRole {
    Buyer,
    Creator,
    RestaurantOwner,
}

impl From<RegisterRole> for Role {
    fn from(r: RegisterRole) -> Self {
        match r {
            RegisterRole::Buyer => Role::Buyer,
            RegisterRole::Creator => Role::Creator,
            RegisterRole::RestaurantOwner => Role::RestaurantOwner,
        }
    }
}

/// Body of `POST /api/v1/auth/login`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub email: String,
    pub password: String,
}

/// Body of `POST /api/v1/auth/refresh` and `/logout`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshToken {
    pub refresh_token: String,
}

/// Access and refresh tokens.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Tokens {
    /// EdDSA JWT for `Authorization: Bearer`; valid 7 days, renewed on activity.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    #[schema(format = DateTime)]
    pub access_token_expires_at: Option<String>,
    /// Trade it at `/api/v1/auth/refresh`; works once.
    pub refresh_token: String,
    #[schema(format = DateTime)]
    pub refresh_token_expires_at: Option<String>,
}

impl From<thali_proto::identity::v1::Tokens> for Tokens {
    fn from(t: thali_proto::identity::v1::Tokens) -> Self {
        Self {
            access_token: t.access_token,
            token_type: "Bearer".to_owned(),
            access_token_expires_at: rfc3339(t.access_token_expire_time),
            refresh_token: t.refresh_token,
            refresh_token_expires_at: rfc3339(t.refresh_token_expire_time),
        }
    }
}

/// Answer of a login.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Session {
    pub account: Account,
    pub tokens: Tokens,
}

/// A partner API key (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    /// Public part of the key (`thali_pk_<prefix>_…`).
    pub prefix: String,
    pub scopes: Vec<String>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    /// Calls per minute the key may make over gRPC; absent: the platform's default.
    pub rate_limit_per_minute: Option<i32>,
}

impl From<thali_proto::identity::v1::ApiKey> for ApiKey {
    fn from(k: thali_proto::identity::v1::ApiKey) -> Self {
        Self {
            id: k.id,
            owner_id: k.owner_id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            created_at: rfc3339(k.create_time),
            expires_at: rfc3339(k.expire_time),
            last_used_at: rfc3339(k.last_use_time),
            revoked_at: rfc3339(k.revoke_time),
            rate_limit_per_minute: (k.rate_limit_per_minute > 0).then_some(k.rate_limit_per_minute),
        }
    }
}

/// Body of `POST /api/v1/admin/accounts/{id}/disable` and `…/enable`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminReason {
    /// Why, for the audit trail.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// Body of `PUT /api/v1/admin/accounts/{id}/role`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAccountRole {
    pub role: Role,
    /// Why, for the audit trail.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// Body of `POST /api/v1/api-keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schema(example = "pos-integration", min_length = 1, max_length = 80)]
    pub name: String,
    /// What the key may do; at least one.
    #[schema(schema_with = scopes_schema)]
    pub scopes: Vec<String>,
    /// RFC 3339, in the future; absent: never expires.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Admins only: create the key for this account.
    #[schema(format = Uuid)]
    pub owner_id: Option<String>,
    /// Admins only: calls per minute the key may make over gRPC (default: the platform's).
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<i32>,
}

fn scopes_schema() -> utoipa::openapi::Array {
    utoipa::openapi::ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).enum_values(Some([
            "storefront.read",
            "storefront.write",
            "booking.read",
            "booking.write",
        ])))
        .min_items(Some(1))
        .unique_items(true)
        .build()
}

/// A new API key: the secret is shown here once and never again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    /// The whole key, `thali_pk_…`; send it as `Authorization: Bearer <key>`.
    pub secret: String,
}

/// A list of API keys.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKey>,
}

/// Query of `GET /api/v1/api-keys`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListApiKeysQuery {
    /// Admins only: another account's keys.
    #[param(format = Uuid)]
    pub owner_id: Option<String>,
}

/// A JSON Web Key (Ed25519 public key).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Jwk {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// `EdDSA`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub usage: String,
    pub kid: String,
    pub x: String,
}

/// The keys that verify Thali access tokens (RFC 7517).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// An in-app notification.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Notification {
    #[schema(format = Uuid)]
    pub id: String,
    /// The event it tells about, e.g. `product.out_of_stock`.
    pub event_type: String,
    /// Plain text: escape it before showing it as HTML.
    pub title: String,
    /// Plain text: escape it before showing it as HTML.
    pub body: String,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// Absent while unread.
    #[schema(format = DateTime)]
    pub read_at: Option<String>,
}

impl From<thali_proto::notifications::v1::Notification> for Notification {
    fn from(n: thali_proto::notifications::v1::Notification) -> Self {
        Self {
            id: n.id,
            event_type: n.event_type,
            title: n.title,
            body: n.body,
            created_at: rfc3339(n.created_at),
            read_at: rfc3339(n.read_at),
        }
    }
}

/// One page of notifications, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationPage {
    pub notifications: Vec<Notification>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// Query of `GET /api/v1/notifications`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListNotificationsQuery {
    /// 1-100; 0 or absent means 20.
    #[param(minimum = 0, maximum = 100)]
    pub page_size: Option<i32>,
    /// From the previous page's `next_page_token`; empty or absent for the first page.
    #[param(pattern = r"^([A-Za-z0-9_-]{21}[AQgw])?$")]
    pub page_token: Option<String>,
    /// Only unread notifications.
    pub unread_only: Option<bool>,
}

/// How many notifications are unread.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UnreadCount {
    pub count: i64,
}

/// Whether one event type is emailed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmailPreference {
    pub event_type: String,
    pub email: bool,
    /// Security and account messages are always emailed.
    pub required: bool,
}

/// A user's notification preferences (in-app notifications are always on).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationPreferences {
    pub email: Vec<EmailPreference>,
}

impl From<thali_proto::notifications::v1::Preferences> for NotificationPreferences {
    fn from(p: thali_proto::notifications::v1::Preferences) -> Self {
        Self {
            email: p
                .email
                .into_iter()
                .map(|e| EmailPreference {
                    event_type: e.event_type,
                    email: e.email,
                    required: e.required,
                })
                .collect(),
        }
    }
}

/// Body of `PUT /api/v1/notification-preferences`: event type → whether to email it. Types not
/// named keep their setting.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNotificationPreferences {
    #[schema(example = json!({"product.out_of_stock": false}))]
    pub email: std::collections::HashMap<String, bool>,
}

/// A partner webhook endpoint (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    #[schema(format = Uuid)]
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    /// `active`, or `disabled` after the endpoint answered 410 Gone.
    pub state: String,
    pub disabled_reason: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// While set, the previous secret signs too (24 hours after a rotation).
    #[schema(format = DateTime)]
    pub previous_secret_until: Option<String>,
}

impl From<thali_proto::notifications::v1::WebhookEndpoint> for WebhookEndpoint {
    fn from(e: thali_proto::notifications::v1::WebhookEndpoint) -> Self {
        Self {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            state: e.state,
            disabled_reason: Some(e.disabled_reason).filter(|r| !r.is_empty()),
            created_at: rfc3339(e.created_at),
            previous_secret_until: rfc3339(e.previous_secret_until),
        }
    }
}

/// An endpoint with its signing secret: shown in this answer only.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEndpointWithSecret {
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: verify deliveries with it (Standard Webhooks). Not shown again.
    pub secret: String,
}

impl From<thali_proto::notifications::v1::WebhookEndpointWithSecret> for WebhookEndpointWithSecret {
    fn from(e: thali_proto::notifications::v1::WebhookEndpointWithSecret) -> Self {
        Self {
            endpoint: e.endpoint.unwrap_or_default().into(),
            secret: e.secret,
        }
    }
}

/// Body of `POST /api/v1/webhook-endpoints`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpoint {
    /// https only; never a private, loopback or link-local address.
    #[schema(example = "https://hooks.example.com/thali", max_length = 2000)]
    pub url: String,
    /// Which events to send: `account.created`, `account.login_new_address`, `product.out_of_stock`.
    #[schema(example = json!(["product.out_of_stock"]))]
    pub event_types: Vec<String>,
}

/// The caller's webhook endpoints.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEndpointList {
    pub endpoints: Vec<WebhookEndpoint>,
}

/// One try of a delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookAttempt {
    #[schema(format = DateTime)]
    pub attempted_at: Option<String>,
    /// Absent when no HTTP answer came (timeout, refused address, connection error).
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

/// One event sent to one endpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookDelivery {
    #[schema(format = Uuid)]
    pub id: String,
    /// The `webhook-id` header of every attempt.
    #[schema(format = Uuid)]
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub state: String,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    pub attempts: Vec<WebhookAttempt>,
}

impl From<thali_proto::notifications::v1::WebhookDelivery> for WebhookDelivery {
    fn from(d: thali_proto::notifications::v1::WebhookDelivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            state: d.state,
            created_at: rfc3339(d.created_at),
            attempts: d
                .attempts
                .into_iter()
                .map(|a| WebhookAttempt {
                    attempted_at: rfc3339(a.attempted_at),
                    status_code: Some(a.status_code).filter(|s| *s != 0),
                    latency_ms: a.latency_ms,
                    error: Some(a.error).filter(|e| !e.is_empty()),
                })
                .collect(),
        }
    }
}

/// One page of an endpoint's deliveries, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookDeliveryPage {
    pub deliveries: Vec<WebhookDelivery>,
    pub next_page_token: Option<String>,
}

/// Query of `GET /api/v1/webhook-endpoints/{id}/deliveries`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDeliveriesQuery {
    /// 1-100; 0 or absent means 20.
    #[param(minimum = 0, maximum = 100)]
    pub page_size: Option<i32>,
    #[param(pattern = r"^([A-Za-z0-9_-]{21}[AQgw])?$")]
    pub page_token: Option<String>,
}

/// Query of `GET /api/v1/admin/audit`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The chain: `identity`, `payments` or `booking`.
    pub service: String,
    /// Exact action, e.g. `login.failed`.
    pub action: Option<String>,
    /// Exact actor, e.g. `acct:<uuid>`.
    pub actor: Option<String>,
    /// Exact target, e.g. `account:<uuid>`.
    pub target: Option<String>,
    /// Records at or after this RFC 3339 time.
    pub since: Option<String>,
    /// 1-200; 0 or absent means 50.
    #[param(minimum = 0, maximum = 200)]
    pub page_size: Option<i32>,
    /// From the previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// One record of the audit trail (ADR 0031).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    pub service: String,
    pub seq: i64,
    pub at: Option<String>,
    pub actor: String,
    pub actor_address: String,
    pub action: String,
    pub target: String,
    /// The details object, as recorded.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// One page of a service's audit chain, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// Body of `DELETE /api/v1/me`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseAccount {
    /// The account's current password.
    pub password: String,
}

/// An erased account (ADR 0032).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErasedAccount {
    pub account_id: String,
    #[schema(format = DateTime)]
    pub erased_at: Option<String>,
}

/// Everything Thali holds about the caller (ADR 0032): one member per service, each in the
/// shape that service gives it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PersonalDataExport {
    pub account_id: String,
    #[schema(format = DateTime)]
    pub exported_at: String,
    /// The account, its sessions, API keys and sign-in addresses.
    #[schema(value_type = Object)]
    pub identity: serde_json::Value,
    /// The stores the account owns, with their products.
    #[schema(value_type = Object)]
    pub storefront: serde_json::Value,
    /// Its bookings as a guest and the restaurants it owns.
    #[schema(value_type = Object)]
    pub booking: serde_json::Value,
    /// Orders it placed and received, its payment accounts (no secrets), refunds it asked for.
    #[schema(value_type = Object)]
    pub payments: serde_json::Value,
    /// Its address as told, notifications, preferences, emails and webhook endpoints.
    #[schema(value_type = Object)]
    pub notifications: serde_json::Value,
}
