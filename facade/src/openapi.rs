//! The OpenAPI 3.1 document, generated from the handlers and DTOs. Error answers are added to
//! every operation in one place so the document lists every status the facade can send.
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, OpenApi as Document, RefOr, ResponseBuilder,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{dto, problem, routes};

#[derive(OpenApi)]
#[openapi(
    info(title = "Thali API", description = "REST facade of the Thali commerce platform", version = "1.0.0"),
    paths(
        routes::create_creator,
        routes::get_creator,
        routes::update_profile,
        routes::create_product,
        routes::list_products,
        routes::update_product,
        routes::archive_product,
        routes::get_storefront,
    ),
    components(schemas(
        dto::Money,
        dto::Creator,
        dto::Product,
        dto::Storefront,
        dto::ProductPage,
        dto::CreateCreator,
        dto::UpdateProfile,
        dto::CreateProduct,
        dto::UpdateProduct,
        problem::ProblemDetails,
        problem::FieldError,
    )),
    modifiers(&ErrorResponses),
    tags(
        (name = "creators", description = "Creator pages"),
        (name = "products", description = "Products of a creator"),
        (name = "storefront", description = "Public storefront reads"),
    )
)]
pub struct ApiDoc;

/// The document served at `/api/v1/openapi.json`.
pub fn document() -> Document {
    ApiDoc::openapi()
}

struct ErrorResponses;

const ANY_CALL: &[(&str, &str)] = &[
    ("400", "Invalid request (problem+json with field errors)"),
    ("404", "Not found"),
    ("405", "Method not allowed"),
    ("500", "Internal error"),
    ("503", "Service unavailable; see Retry-After"),
    ("504", "The service did not answer in time"),
];

const WITH_CREDENTIALS: &[(&str, &str)] = &[
    ("401", "Missing, malformed, expired or foreign token"),
    ("403", "The caller may not do this"),
    ("409", "Conflict: taken username or reused idempotency key"),
    ("413", "Body too large"),
    ("415", "Body is not application/json"),
];

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
                let mut add = |status: &str, description: &str| {
                    op.responses.responses.entry(status.to_owned()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(description)
                                .content("application/problem+json", problem())
                                .build(),
                        )
                    });
                };
                for (status, description) in ANY_CALL {
                    add(status, description);
                }
                for (status, description) in WITH_CREDENTIALS {
                    if authed && (has_body || !matches!(*status, "413" | "415")) {
                        add(status, description);
                    }
                }
                // Reads that accept optional credentials can still refuse bad ones.
                if !authed {
                    add("401", "Malformed, expired or foreign token sent");
                }
            }
        }
    }
}
