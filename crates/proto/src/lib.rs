//! Thali's gRPC contracts, generated from `proto/` at build time.
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)]

/// Encoded `FileDescriptorSet` of every Thali contract (with imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/thali_descriptor.bin"));

mod retry;
pub use retry::RetryPolicy;

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("thali.audit.v1");

        crate::retry::retry_table! {
            ListAuditRecordsRequest => "ListAuditRecords", read;
        }
    }
}

pub mod booking {
    pub mod v1 {
        tonic::include_proto!("thali.booking.v1");

        crate::retry::retry_table! {
            CreateRestaurantRequest => "CreateRestaurant", keyed;
            GetRestaurantRequest => "GetRestaurant", read;
            UpdateRestaurantRequest => "UpdateRestaurant", never;
            // The label is unique: a repeat answers LABEL_TAKEN rather than adding a second.
            CreateTableRequest => "CreateTable", never;
            ListTablesRequest => "ListTables", read;
            UpdateTableRequest => "UpdateTable", never;
            DeleteTableRequest => "DeleteTable", never;
            // Replaces the whole week: a repeat leaves the same state.
            SetHoursRequest => "SetHours", idempotent;
            AddClosureRequest => "AddClosure", never;
            SearchRestaurantsRequest => "SearchRestaurants", read;
            GetAvailabilityRequest => "GetAvailability", read;
            CreateBookingRequest => "CreateBooking", keyed;
            GetBookingRequest => "GetBooking", read;
            ListBookingsRequest => "ListBookings", read;
            // A cancelled booking stays cancelled: a repeat answers the same booking.
            CancelBookingRequest => "CancelBooking", idempotent;
            // Marking twice answers the booking as it is.
            MarkNoShowRequest => "MarkNoShow", idempotent;
        }
    }
}

pub mod common {
    pub mod v1 {
        tonic::include_proto!("thali.common.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("thali.events.v1");

        crate::retry::retry_table! {
            // The receiver keeps each event id under a unique constraint.
            DeliverRequest => "Deliver", idempotent;
        }
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("thali.identity.v1");

        crate::retry::retry_table! {
            RegisterRequest => "Register", keyed;
            // Each attempt is a counted login attempt and opens a session.
            LoginRequest => "Login", never;
            // A refresh token works once: a repeat would look like token theft.
            RefreshRequest => "Refresh", never;
            LogoutRequest => "Logout", never;
            MeRequest => "Me", read;
            RenewAccessTokenRequest => "RenewAccessToken", read;
            CreateApiKeyRequest => "CreateApiKey", keyed;
            ListApiKeysRequest => "ListApiKeys", read;
            RevokeApiKeyRequest => "RevokeApiKey", never;
            // Only touches the key's last use.
            VerifyApiKeyRequest => "VerifyApiKey", read;
            ListSigningKeysRequest => "ListSigningKeys", read;
            // Each call mails a new token.
            RequestEmailVerificationRequest => "RequestEmailVerification", never;
            // A token works once: a repeat would fail.
            VerifyEmailRequest => "VerifyEmail", never;
            RequestPasswordResetRequest => "RequestPasswordReset", never;
            ResetPasswordRequest => "ResetPassword", never;
            ListRevocationsRequest => "ListRevocations", read;
            DisableAccountRequest => "DisableAccount", idempotent;
            EnableAccountRequest => "EnableAccount", idempotent;
            SetAccountRoleRequest => "SetAccountRole", idempotent;
            // After an erasure the caller's token is refused: a repeat could not say it worked.
            EraseAccountRequest => "EraseAccount", never;
        }
    }
}

pub mod notifications {
    pub mod v1 {
        tonic::include_proto!("thali.notifications.v1");

        crate::retry::retry_table! {
            ListNotificationsRequest => "ListNotifications", read;
            // Marking read twice leaves the same state.
            MarkReadRequest => "MarkRead", idempotent;
            UnreadCountRequest => "UnreadCount", read;
            GetPreferencesRequest => "GetPreferences", read;
            // Sets values, never adds to them: a repeat leaves the same state.
            UpdatePreferencesRequest => "UpdatePreferences", idempotent;
            // Each call makes an endpoint and a secret.
            CreateWebhookEndpointRequest => "CreateWebhookEndpoint", never;
            ListWebhookEndpointsRequest => "ListWebhookEndpoints", read;
            // A repeat would answer NOT_FOUND for a delete that happened.
            DeleteWebhookEndpointRequest => "DeleteWebhookEndpoint", never;
            RotateWebhookSecretRequest => "RotateWebhookSecret", never;
            ListWebhookDeliveriesRequest => "ListWebhookDeliveries", read;
            ResendWebhookDeliveryRequest => "ResendWebhookDelivery", never;
        }
    }
}

pub mod payments {
    pub mod v1 {
        tonic::include_proto!("thali.payments.v1");

        crate::retry::retry_table! {
            CreateOrderRequest => "CreateOrder", keyed;
            GetOrderRequest => "GetOrder", read;
            ListOrdersRequest => "ListOrders", read;
            VerifyPaymentRequest => "VerifyPayment", read;
            ReceiveWebhookRequest => "ReceiveWebhook", idempotent;
            RefundOrderRequest => "RefundOrder", keyed;
            FulfilOrderRequest => "FulfilOrder", idempotent;
            // Sets the store's one account to these values: a repeat leaves the same state.
            PutPaymentAccountRequest => "PutPaymentAccount", idempotent;
            GetPaymentAccountRequest => "GetPaymentAccount", read;
            // One order per booking: a repeat answers the same order.
            CreateDepositOrderRequest => "CreateDepositOrder", idempotent;
        }
    }
}

pub mod privacy {
    pub mod v1 {
        tonic::include_proto!("thali.privacy.v1");

        crate::retry::retry_table! {
            ExportPersonalDataRequest => "ExportPersonalData", read;
        }
    }
}

pub mod storefront {
    pub mod v1 {
        tonic::include_proto!("thali.storefront.v1");

        crate::retry::retry_table! {
            CreateCreatorRequest => "CreateCreator", keyed;
            GetCreatorRequest => "GetCreator", read;
            UpdateProfileRequest => "UpdateProfile", never;
            CreateProductRequest => "CreateProduct", keyed;
            UpdateProductRequest => "UpdateProduct", never;
            ArchiveProductRequest => "ArchiveProduct", never;
            ListProductsRequest => "ListProducts", read;
            GetStorefrontRequest => "GetStorefront", read;
            ReserveStockRequest => "ReserveStock", idempotent;
            CommitReservationRequest => "CommitReservation", idempotent;
            ReleaseReservationRequest => "ReleaseReservation", idempotent;
        }

        /// An upload as the client stack sends it: the target and the whole body, cut into
        /// `UploadMedia` chunks when sent (one attempt: an upload is never sent twice).
        #[derive(Debug, Clone)]
        pub struct MediaUpload {
            pub target: MediaTarget,
            pub bytes: prost::bytes::Bytes,
        }

        impl crate::retry::RetryPolicy for MediaUpload {
            const METHOD: &'static str = "UploadMedia";
            fn retry_safe(&self) -> bool {
                false
            }
        }

        impl MediaUpload {
            /// The request stream's messages: the target, then chunks of at most `chunk` bytes.
            pub fn messages(&self, chunk: usize) -> Vec<UploadMediaRequest> {
                let mut out = vec![UploadMediaRequest {
                    part: Some(upload_media_request::Part::Target(self.target.clone())),
                }];
                out.extend(self.bytes.chunks(chunk.max(1)).map(|c| UploadMediaRequest {
                    part: Some(upload_media_request::Part::Chunk(c.to_vec())),
                }));
                out
            }
        }
    }
}
