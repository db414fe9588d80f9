//! The OpenAPI 3.1 document, generated from the handlers and DTOs. Error answers are added to
//! every operation in one place so the document lists every status the facade can send.
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, Header, ObjectBuilder, OpenApi as Document, RefOr, ResponseBuilder, Type,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{dto, problem, routes};

#[derive(OpenApi)]
#[openapi(
    info(title = "Thali API", description = "REST facade of the Thali commerce platform", version = "1.0.0"),
    paths(
        routes::identity::register,
        routes::identity::login,
        routes::identity::refresh,
        routes::identity::logout,
        routes::identity::me,
        routes::identity::verify_email,
        routes::identity::resend_verification,
        routes::identity::password_reset,
        routes::identity::password_reset_confirm,
        routes::identity::create_api_key,
        routes::identity::list_api_keys,
        routes::identity::revoke_api_key,
        routes::identity::jwks,
        routes::identity::disable_account,
        routes::identity::enable_account,
        routes::identity::set_account_role,
        routes::audit::list,
        routes::privacy::export,
        routes::privacy::erase,
        routes::storefront::create_creator,
        routes::storefront::get_creator,
        routes::storefront::update_profile,
        routes::storefront::create_product,
        routes::storefront::list_products,
        routes::storefront::update_product,
        routes::storefront::archive_product,
        routes::storefront::get_storefront,
        routes::media::add_product_image,
        routes::media::set_avatar,
        routes::media::read,
        routes::notifications::list,
        routes::notifications::mark_read,
        routes::notifications::unread_count,
        routes::notifications::get_preferences,
        routes::notifications::put_preferences,
        routes::notifications::create_endpoint,
        routes::notifications::list_endpoints,
        routes::notifications::delete_endpoint,
        routes::notifications::rotate_secret,
        routes::notifications::list_deliveries,
        routes::notifications::resend_delivery,
        routes::booking::create_restaurant,
        routes::booking::get_restaurant,
        routes::booking::update_restaurant,
        routes::booking::create_table,
        routes::booking::list_tables,
        routes::booking::update_table,
        routes::booking::delete_table,
        routes::booking::set_hours,
        routes::booking::add_closure,
        routes::booking::search,
        routes::booking::availability,
        routes::booking::create_booking,
        routes::booking::get_booking,
        routes::booking::list_bookings,
        routes::booking::cancel_booking,
        routes::booking::mark_no_show,
        routes::payments::create_order,
        routes::payments::get_order,
        routes::payments::list_orders,
        routes::payments::verify_payment,
        routes::payments::refund_order,
        routes::payments::fulfil_order,
        routes::payments::razorpay_webhook,
        routes::payments::razorpay_account_webhook,
        routes::payments::put_payment_account,
        routes::payments::get_payment_account,
    ),
    components(schemas(
        dto::AdminReason,
        dto::SetAccountRole,
        dto::booking::Policy,
        dto::booking::PolicyChanges,
        dto::booking::OpeningHours,
        dto::booking::Hours,
        dto::booking::Restaurant,
        dto::booking::CreateRestaurant,
        dto::booking::UpdateRestaurant,
        dto::booking::Table,
        dto::booking::TableList,
        dto::booking::CreateTable,
        dto::booking::UpdateTable,
        dto::booking::CreateClosure,
        dto::booking::Closure,
        dto::booking::Slot,
        dto::booking::Availability,
        dto::booking::SearchResult,
        dto::booking::SearchPage,
        dto::booking::Booking,
        dto::booking::Deposit,
        dto::booking::CreateBooking,
        dto::booking::CancelBooking,
        dto::booking::BookingPage,
        dto::payments::CheckoutLine,
        dto::payments::CreateOrder,
        dto::payments::VerifyPayment,
        dto::payments::OrderLine,
        dto::payments::Checkout,
        dto::payments::Order,
        dto::payments::OrderPage,
        dto::payments::WebhookAccepted,
        dto::payments::RefundOrder,
        dto::payments::Refund,
        dto::payments::RefundAnswer,
        dto::payments::FulfilOrder,
        dto::payments::PutPaymentAccount,
        dto::payments::PaymentAccount,
        dto::Money,
        dto::Creator,
        dto::Product,
        dto::Storefront,
        dto::ProductPage,
        dto::CreateCreator,
        dto::UpdateProfile,
        dto::CreateProduct,
        dto::UpdateProduct,
        dto::Role,
        dto::RegisterRole,
        dto::Account,
        dto::VerifyEmail,
        dto::PasswordResetRequest,
        dto::PasswordResetConfirm,
        dto::Accepted,
        dto::Register,
        dto::Login,
        dto::RefreshToken,
        dto::Tokens,
        dto::Session,
        dto::ApiKey,
        dto::CreateApiKey,
        dto::CreatedApiKey,
        dto::ApiKeyList,
        dto::Jwk,
        dto::Jwks,
        dto::Notification,
        dto::NotificationPage,
        dto::UnreadCount,
        dto::EmailPreference,
        dto::NotificationPreferences,
        dto::UpdateNotificationPreferences,
        dto::WebhookEndpoint,
        dto::WebhookEndpointWithSecret,
        dto::CreateWebhookEndpoint,
        dto::WebhookEndpointList,
        dto::WebhookAttempt,
        dto::WebhookDelivery,
        dto::WebhookDeliveryPage,
        dto::AuditRecord,
        dto::AuditPage,
        dto::EraseAccount,
        dto::Image,
        dto::ErasedAccount,
        dto::PersonalDataExport,
        problem::ProblemDetails,
        problem::FieldError,
    )),
    modifiers(&ErrorResponses),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "api-keys", description = "Partner API keys"),
        (name = "admin", description = "Operations only admins may call"),
        (name = "creators", description = "Creator pages"),
        (name = "products", description = "Products of a creator"),
        (name = "storefront", description = "Public storefront reads"),
        (name = "notifications", description = "The caller's notifications and preferences"),
        (name = "webhooks", description = "Partner webhook endpoints (Standard Webhooks)"),
    )
)]
pub struct ApiDoc;

/// The document served at `/api/v1/openapi.json`.
pub fn document() -> Document {
    ApiDoc::openapi()
}

struct ErrorResponses;

/// Error answers any operation can give.
const ANY_CALL: &[(&str, &str)] = &[
    ("400", "Invalid request (problem+json with field errors)"),
    ("401", "Missing, malformed, expired or foreign credentials"),
    ("403", "The caller may not do this"),
    ("404", "Not found"),
    ("405", "Method not allowed"),
    (
        "409",
        "Conflict: taken name, or an idempotency key reused for another request",
    ),
    ("429", "Too many requests; see Retry-After"),
    ("500", "Internal error"),
    ("503", "Service unavailable; see Retry-After"),
    ("504", "The service did not answer in time"),
];

/// Error answers of operations that take a body.
const WITH_BODY: &[(&str, &str)] = &[("413", "Body too large"), ("415", "Body is not application/json")];

impl Modify for ErrorResponses {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        let problem = || Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"))));
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let authed = op.security.is_some();
                let has_body = op.request_body.is_some();
                if authed {
                    // A request with a day-old token gets a fresh one back.
                    for (status, response) in op.responses.responses.iter_mut() {
                        if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
                            response.headers.insert(
                                "X-Thali-Access-Token".to_owned(),
                                RefOr::T(
                                    Header::builder()
                                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                                        .description(Some(
                                            "A renewed access token, when the one sent is over a day old",
                                        ))
                                        .build(),
                                ),
                            );
                        }
                    }
                }
                let errors = ANY_CALL.iter().chain(if has_body { WITH_BODY } else { &[] });
                for (status, description) in errors {
                    op.responses.responses.entry((*status).to_owned()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(*description)
                                .content("application/problem+json", problem())
                                .build(),
                        )
                    });
                }
            }
        }
    }
}
