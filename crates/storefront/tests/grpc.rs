//! The storefront service through a real tonic server on an ephemeral port, behind the
//! platform server stack: every RPC, its error statuses and details, health and reflection.
mod support;

use std::time::Duration;

use support::{Harness, as_user, bad_fields, inr, new_creator, reason};
use thali_proto::{
    common::v1::Money,
    storefront::v1::{self as pb, storefront_service_client::StorefrontServiceClient},
};
use tonic::{Code, Request};

#[tokio::test]
async fn creator_lifecycle_and_its_errors() {
    let h = Harness::start().await;
    let mut client = h.client();
    let alice = h.token("alice");
    let bob = h.token("bob");

    let err = client.create_creator(new_creator("chai_point")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "a service call on behalf of nobody cannot write"
    );

    let err = client
        .create_creator(as_user(&h.buyer_token("carol"), new_creator("chai_point")))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "CREATOR_ROLE_REQUIRED")
    );

    let err = client
        .create_creator(as_user("garbage", new_creator("chai_point")))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "a bad token is refused by the server stack"
    );

    let err = client
        .create_creator(as_user(
            &alice,
            pb::CreateCreatorRequest {
                display_name: String::new(),
                ..new_creator("No")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["username", "display_name"]);
    assert_eq!(reason(&err), "VALIDATION_FAILED");

    let err = client
        .create_creator(as_user(&alice, new_creator("admin")))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["username"]);

    let made = client
        .create_creator(as_user(&alice, new_creator("chai_point")))
        .await
        .unwrap()
        .into_inner();
    let creator = made.creator.unwrap();
    assert_eq!(creator.owner_subject, "alice");
    assert_eq!(uuid::Uuid::parse_str(&creator.id).unwrap().get_version_num(), 7);

    let err = client
        .create_creator(as_user(&bob, new_creator("chai_point")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(reason(&err), "USERNAME_TAKEN");

    let got = client
        .get_creator(pb::GetCreatorRequest {
            username: "chai_point".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.creator.unwrap().id, creator.id);
    let err = client
        .get_creator(pb::GetCreatorRequest {
            username: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "CREATOR_NOT_FOUND")
    );
    let err = client
        .get_creator(pb::GetCreatorRequest {
            username: "Not Valid!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let update = pb::UpdateProfileRequest {
        username: "chai_point".into(),
        display_name: Some("Chai Point Co".into()),
        bio: None,
    };
    let err = client.update_profile(as_user(&bob, update.clone())).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "NOT_OWNER")
    );
    let err = client.update_profile(update.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let updated = client
        .update_profile(as_user(&alice, update))
        .await
        .unwrap()
        .into_inner()
        .creator
        .unwrap();
    assert_eq!(
        (updated.display_name.as_str(), updated.bio.as_str()),
        ("Chai Point Co", "Tea")
    );
}

#[tokio::test]
async fn idempotent_create_answers_the_same_creator() {
    let h = Harness::start().await;
    let mut client = h.client();
    let alice = h.token("alice");
    let req = pb::CreateCreatorRequest {
        idempotency_key: "abc-1".into(),
        ..new_creator("idem_creator")
    };
    let first = client
        .create_creator(as_user(&alice, req.clone()))
        .await
        .unwrap()
        .into_inner();
    let second = client.create_creator(as_user(&alice, req)).await.unwrap().into_inner();
    assert_eq!(first.creator.unwrap().id, second.creator.unwrap().id);
    let other = pb::CreateCreatorRequest {
        idempotency_key: "abc-1".into(),
        ..new_creator("another_one")
    };
    let err = client.create_creator(as_user(&alice, other)).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Aborted, "IDEMPOTENCY_KEY_REUSED")
    );
}

#[tokio::test]
async fn products_lifecycle_and_storefront() {
    let h = Harness::start().await;
    let mut client = h.client();
    let alice = h.token("alice");
    let bob = h.token("bob");
    client
        .create_creator(as_user(&alice, new_creator("snack_bar")))
        .await
        .unwrap();

    let product = |title: &str, price: Option<Money>| pb::CreateProductRequest {
        username: "snack_bar".into(),
        title: title.into(),
        description: "Hot".into(),
        price,
        stock: None,
        active: None,
        idempotency_key: String::new(),
    };
    let err = client
        .create_product(as_user(&alice, product("Samosa", inr(0))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["price.amount_minor"]);
    let err = client
        .create_product(as_user(&alice, product("Samosa", None)))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["price"]);
    let err = client
        .create_product(as_user(&bob, product("Samosa", inr(30))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .create_product(as_user(
            &alice,
            pb::CreateProductRequest {
                username: "ghost_shop".into(),
                ..product("Samosa", inr(30))
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let samosa = client
        .create_product(as_user(&alice, product("Samosa", inr(30))))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert!(samosa.active);
    assert_eq!(samosa.stock, None);
    let chai = client
        .create_product(as_user(&alice, product("Chai", inr(20))))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();

    let err = client
        .update_product(as_user(
            &alice,
            pb::UpdateProductRequest {
                product_id: "not-a-uuid".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["product_id"]);
    let err = client
        .update_product(as_user(
            &alice,
            pb::UpdateProductRequest {
                product_id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "PRODUCT_NOT_FOUND")
    );
    let change = pb::UpdateProductRequest {
        product_id: samosa.id.clone(),
        price: inr(35),
        stock: Some(pb::StockUpdate { quantity: Some(12) }),
        ..Default::default()
    };
    let err = client.update_product(as_user(&bob, change.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let changed = client
        .update_product(as_user(&alice, change))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!((changed.price.unwrap().amount_minor, changed.stock), (35, Some(12)));

    let archived = client
        .archive_product(as_user(
            &alice,
            pb::ArchiveProductRequest {
                product_id: chai.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert!(archived.archive_time.is_some());
    let err = client
        .update_product(as_user(
            &alice,
            pb::UpdateProductRequest {
                product_id: chai.id.clone(),
                active: Some(true),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "PRODUCT_ARCHIVED")
    );

    let store = client
        .get_storefront(pb::GetStorefrontRequest {
            username: "snack_bar".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(store.creator.unwrap().username, "snack_bar");
    assert_eq!(
        store.products.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [samosa.id.as_str()]
    );
    let err = client
        .get_storefront(pb::GetStorefrontRequest {
            username: "ghost_shop".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let page = client
        .list_products(pb::ListProductsRequest {
            username: "snack_bar".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.products.len(), 1);
    assert!(page.next_page_token.is_empty(), "one active product fits one page");
    let err = client
        .list_products(pb::ListProductsRequest {
            username: "snack_bar".into(),
            page_size: 1,
            page_token: "%%%".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["page_token"]);
    let err = client
        .list_products(pb::ListProductsRequest {
            username: "snack_bar".into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["page_size"]);
}

#[tokio::test]
async fn only_health_and_reflection_answer_without_credentials() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let h = Harness::start().await;
    let raw = tonic::transport::Endpoint::from_shared(h.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = StorefrontServiceClient::new(raw.clone())
        .get_storefront(pb::GetStorefrontRequest {
            username: "anyone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut health = HealthClient::new(raw);
    let mut answered = false;
    for _ in 0..100 {
        if health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "health answers without credentials");

    // A service token for another service does not open this one.
    let foreign = h.signer.mint_service("test", "thali-identity", Duration::from_secs(60));
    let mut req = Request::new(pb::GetStorefrontRequest {
        username: "anyone".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {foreign}").parse().unwrap());
    let raw = tonic::transport::Endpoint::from_shared(h.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = StorefrontServiceClient::new(raw).get_storefront(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn health_reports_the_database_but_the_service_keeps_serving() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let h = Harness::start().await;
    let mut health = HealthClient::new(h.channel());
    let mut status_of = async |service: &str| {
        health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(ServingStatus::Unknown as i32)
    };
    let service = "thali.storefront.v1.StorefrontService";
    let mut database_up = false;
    for _ in 0..100 {
        if status_of("database").await == ServingStatus::Serving as i32 {
            database_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(database_up, "the database entry says SERVING while it answers");
    assert_eq!(status_of(service).await, ServingStatus::Serving as i32);

    h.db.close_by_ref().await.unwrap();
    let mut database_down = false;
    for _ in 0..250 {
        if status_of("database").await == ServingStatus::NotServing as i32 {
            database_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(database_down, "the database entry says NOT_SERVING once it is gone");
    // The service itself stays in rotation: cached pages still answer (ADR 0010).
    assert_eq!(status_of(service).await, ServingStatus::Serving as i32);
    assert_eq!(status_of("").await, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_service() {
    let h = Harness::start().await;
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(h.channel());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a list of services");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"thali.storefront.v1.StorefrontService".to_owned()),
            "{names:?}"
        );
        assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "thali.storefront.v1.StorefrontService".into(),
            )),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected file descriptors");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(h.channel());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a list of services");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "thali.storefront.v1.StorefrontService")
        );
    }
}
