//! The tonic implementation of `thali.payments.v1.PaymentsService`: proto ↔ domain, the checkout
//! across the storefront (stock) and the gateway (the order to pay), and the one mapping of domain
//! errors to `Status`.
use std::{sync::Arc, time::Duration};

use thali_platform::{
    audit::{SecurityEvent, access_denied, security_event},
    auth::Principal,
    client::{Client, GrpcChannel},
    errors,
    idempotency::Idempotency,
    server::{ServiceCaller, principal},
};
use thali_proto::{
    common::v1::Money,
    payments::v1 as pb,
    storefront::v1::{self as storefront, storefront_service_client::StorefrontServiceClient},
};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        self, CheckoutRequest, GatewayCall, ORDER_TTL, OrderLine, OrderRecord, PaymentsError, STOCK_HOLD_SECONDS,
        Status as OrderStatus,
    },
    gateway::{Gateway, GatewayError, NewGatewayOrder},
    signature,
    store::{Accounts, ConnectedAccount, NewOrder, OrdersOf, PaymentsStore, RefundAsk, RefundRecord, Taken, Written},
};

pub use crate::gateway::PlatformAccount;

/// The payments gRPC service.
#[derive(Clone)]
pub struct PaymentsGrpc {
    store: PaymentsStore,
    storefront: Client<StorefrontServiceClient<GrpcChannel>>,
    gateway: Arc<dyn Gateway>,
    accounts: Accounts,
    /// The budget of Razorpay's webhooks per payment account, counted only once a delivery's
    /// signature checks out (ADR 0026); None: unlimited.
    webhook_limit: Option<Arc<WebhookLimit>>,
}

/// See [`PaymentsGrpc::webhook_limit`].
pub struct WebhookLimit {
    pub limiter: thali_platform::ratelimit::RateLimiter,
    pub quota: thali_platform::ratelimit::Quota,
}

impl PaymentsGrpc {
    /// Limits signed webhook deliveries per payment account.
    pub fn limit_webhooks(&mut self, limit: WebhookLimit) {
        self.webhook_limit = Some(Arc::new(limit));
    }

    pub fn new(
        store: PaymentsStore,
        storefront: Client<StorefrontServiceClient<GrpcChannel>>,
        gateway: Arc<dyn Gateway>,
        accounts: Accounts,
    ) -> Self {
        Self {
            store,
            storefront,
            gateway,
            accounts,
            webhook_limit: None,
        }
    }

    /// Holds the stock, creates the gateway order and writes the order. A failure after the
    /// stock is held gives it back (best effort: the storefront's expiry is the backstop).
    async fn checkout(
        &self,
        buyer: &str,
        req: &CheckoutRequest,
        idem: Option<&Idempotency>,
    ) -> Result<OrderRecord, PaymentsError> {
        if let Some(idem) = idem
            && let Some(order) = self.store.replay_checkout(buyer, idem).await?
        {
            return Ok(order);
        }
        let id = Uuid::now_v7();
        let held = self.reserve(id, req).await?;
        // The store's own gateway account when its creator connected one, else the platform's.
        let own = match self
            .store
            .account_of_seller(&self.accounts.keys, &held.owner_subject)
            .await
        {
            Ok(own) => own,
            Err(e) => {
                self.give_back(id).await;
                return Err(e);
            }
        };
        let (payment_account_id, credentials) = match own {
            Some(account) => (Some(account.id), account.credentials),
            None => (None, self.accounts.platform.credentials.clone()),
        };
        let total = held.total.clone().unwrap_or_default();
        let gateway_order = NewGatewayOrder {
            amount_minor: total.amount_minor,
            currency: total.currency.clone(),
            receipt: id.simple().to_string(),
            notes: [
                ("thali_order_id".to_owned(), id.to_string()),
                ("store".to_owned(), req.username.clone()),
            ]
            .into_iter()
            .collect(),
        };
        let (gateway_order, call) = match self
            .create_at_gateway(id, "checkout", &credentials, &gateway_order)
            .await
        {
            Ok(created) => created,
            Err(e) => {
                self.give_back(id).await;
                return Err(e);
            }
        };
        let now = self.store.now();
        let record = OrderRecord {
            id,
            status: OrderStatus::Pending,
            buyer_subject: buyer.to_owned(),
            username: held.username.clone(),
            seller_subject: held.owner_subject.clone(),
            lines: held
                .lines
                .iter()
                .map(|l| {
                    Ok(OrderLine {
                        product_id: Uuid::parse_str(&l.product_id)
                            .map_err(|_| PaymentsError::Internal("the storefront sent a bad product id".into()))?,
                        title: l.title.clone(),
                        quantity: l.quantity,
                        unit_price_minor: l.unit_price.as_ref().map(|m| m.amount_minor).unwrap_or_default(),
                    })
                })
                .collect::<Result<_, PaymentsError>>()?,
            amount_minor: total.amount_minor,
            currency: total.currency,
            refunded_minor: 0,
            gateway: self.accounts.platform.gateway.clone(),
            key_id: credentials.key_id.clone(),
            gateway_order_id: gateway_order.id,
            expires_at: now + ORDER_TTL,
            created_at: now,
            updated_at: now,
            paid_at: None,
            fulfilment: None,
            payment_account_id,
            reference: None,
        };
        match self.store.insert_order(&NewOrder { record }, idem, &call).await {
            Ok(Written::Created(order)) => Ok(order),
            Ok(Written::Replayed(winner)) => {
                // A concurrent checkout with the same key won: this one's stock goes back.
                self.give_back(id).await;
                Ok(winner)
            }
            Err(e) => {
                self.give_back(id).await;
                Err(e)
            }
        }
    }

    /// Creates the gateway order for our order `id`; the call is recorded when it failed, and
    /// answered to be recorded with the order when it succeeded.
    async fn create_at_gateway(
        &self,
        id: Uuid,
        source: &'static str,
        credentials: &crate::gateway::Credentials,
        order: &NewGatewayOrder,
    ) -> Result<(crate::gateway::GatewayOrder, GatewayCall), PaymentsError> {
        let started = std::time::Instant::now();
        let created = self.gateway.create_order(credentials, order).await;
        let mut call = GatewayCall {
            order_id: id,
            call: "create_order",
            source,
            outcome: "ok",
            gateway_ref: None,
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        };
        match created {
            Ok(order) => {
                call.gateway_ref = Some(order.id.clone());
                Ok((order, call))
            }
            Err(e) => {
                call.outcome = e.outcome();
                if let Err(record) = self.store.record_call(&call).await {
                    tracing::warn!(order_id = %id, error = %record, "gateway call not recorded");
                }
                Err(match e {
                    GatewayError::BadRequest { description, .. } => PaymentsError::GatewayRefused(description),
                    other => {
                        tracing::warn!(order_id = %id, error = %other, "the gateway did not create the order");
                        PaymentsError::GatewayUnavailable
                    }
                })
            }
        }
    }

    /// A booking's deposit order on the platform's account: the one already written for this
    /// booking, or a new one.
    async fn deposit(&self, d: &domain::Deposit) -> Result<OrderRecord, PaymentsError> {
        let reference = d.reference();
        if let Some(existing) = self.store.order_by_reference(&reference).await? {
            return Ok(existing);
        }
        let id = Uuid::now_v7();
        let credentials = self.accounts.platform.credentials.clone();
        let gateway_order = NewGatewayOrder {
            amount_minor: d.amount_minor(),
            currency: d.currency.clone(),
            receipt: id.simple().to_string(),
            notes: [
                ("thali_order_id".to_owned(), id.to_string()),
                ("booking_id".to_owned(), d.booking_id.to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let (gateway_order, call) = self
            .create_at_gateway(id, "deposit", &credentials, &gateway_order)
            .await?;
        let now = self.store.now();
        let record = OrderRecord {
            id,
            status: OrderStatus::Pending,
            buyer_subject: d.buyer_subject.clone(),
            username: d.restaurant_name.clone(),
            seller_subject: d.seller_subject.clone(),
            lines: vec![OrderLine {
                product_id: d.booking_id,
                title: "Table deposit".to_owned(),
                quantity: d.guests,
                unit_price_minor: d.per_guest_minor,
            }],
            amount_minor: d.amount_minor(),
            currency: d.currency.clone(),
            refunded_minor: 0,
            gateway: self.accounts.platform.gateway.clone(),
            key_id: credentials.key_id.clone(),
            gateway_order_id: gateway_order.id,
            expires_at: now + ORDER_TTL,
            created_at: now,
            updated_at: now,
            paid_at: None,
            fulfilment: None,
            payment_account_id: None,
            reference: Some(reference),
        };
        match self.store.insert_order(&NewOrder { record }, None, &call).await? {
            Written::Created(order) | Written::Replayed(order) => Ok(order),
        }
    }

    /// Holds the lines' stock in the storefront under the order's id.
    async fn reserve(&self, id: Uuid, req: &CheckoutRequest) -> Result<storefront::Reservation, PaymentsError> {
        let request = storefront::ReserveStockRequest {
            reservation_id: id.to_string(),
            username: req.username.clone(),
            lines: req
                .lines
                .iter()
                .map(|(product, quantity)| storefront::ReservationLine {
                    product_id: product.to_string(),
                    quantity: *quantity,
                })
                .collect(),
            hold_seconds: STOCK_HOLD_SECONDS,
        };
        let answer = self
            .storefront
            .call(request, |mut c, r| async move { c.reserve_stock(r).await })
            .await;
        match answer {
            Ok(res) => res
                .into_inner()
                .reservation
                .ok_or_else(|| PaymentsError::Internal("the storefront answered no reservation".into())),
            Err(status) => Err(from_storefront(status)),
        }
    }

    /// Releases the stock held for `id`; a failure is logged (the storefront's expiry sweep puts
    /// it back later).
    async fn give_back(&self, id: Uuid) {
        let request = storefront::ReleaseReservationRequest {
            reservation_id: id.to_string(),
        };
        if let Err(status) = self
            .storefront
            .call(request, |mut c, r| async move { c.release_reservation(r).await })
            .await
        {
            tracing::warn!(order_id = %id, code = ?status.code(), "held stock not released now; the storefront's expiry will");
        }
    }

    /// The order `id` if `who` may see it; NOT_FOUND otherwise (an order of someone else's does
    /// not exist for them).
    async fn visible_order(&self, who: &Principal, id: &str) -> Result<OrderRecord, PaymentsError> {
        let id = Uuid::parse_str(id).map_err(|_| PaymentsError::OrderNotFound)?;
        let order = self.store.order(id).await?;
        if !domain::may_see(
            &who.subject,
            domain::is_admin(&who.roles),
            &order.buyer_subject,
            &order.seller_subject,
        ) {
            access_denied(who, &format!("order {id}"), "not its buyer or seller");
            return Err(PaymentsError::OrderNotFound);
        }
        Ok(order)
    }
}

impl PaymentsGrpc {
    /// The store `username`'s owner, if `who` is that owner or an admin.
    async fn owned_store(&self, who: &Principal, username: &str) -> Result<String, PaymentsError> {
        let request = storefront::GetCreatorRequest {
            username: username.to_owned(),
        };
        let creator = self
            .storefront
            .call(request, |mut c, r| async move { c.get_creator(r).await })
            .await
            .map_err(from_storefront)?
            .into_inner()
            .creator
            .ok_or_else(|| PaymentsError::Internal("the storefront answered no creator".into()))?;
        if creator.owner_subject.is_empty() {
            return Err(PaymentsError::Internal(
                "the storefront did not say who owns the store".into(),
            ));
        }
        if creator.owner_subject != who.subject && !domain::is_admin(&who.roles) {
            access_denied(who, &format!("payment account of {username}"), "not the store's owner");
            return Err(PaymentsError::NotStoreOwner);
        }
        Ok(creator.owner_subject)
    }

    /// Checks a key pair with the gateway before it is stored: reading an order that does not
    /// exist is NOT_FOUND with good credentials and UNAUTHORIZED with bad ones.
    async fn check_credentials(&self, credentials: &crate::gateway::Credentials) -> Result<(), PaymentsError> {
        match self.gateway.fetch_order(credentials, "order_ThaliKeyCheck00").await {
            Ok(_) | Err(GatewayError::NotFound) => Ok(()),
            Err(GatewayError::Unauthorized) => Err(PaymentsError::InvalidCredentials),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "the gateway did not answer a credentials check");
                Err(PaymentsError::GatewayUnavailable)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the gateway refused a credentials check");
                Err(PaymentsError::InvalidCredentials)
            }
        }
    }
}

fn account_pb(a: ConnectedAccount) -> pb::PaymentAccount {
    pb::PaymentAccount {
        id: a.id.to_string(),
        username: a.username,
        key_id: a.credentials.key_id,
        key_secret_masked: domain::mask(a.credentials.key_secret.expose()),
        webhook_secret_masked: domain::mask(a.webhook_secret.expose()),
        data_key_id: a.data_key_id,
        webhook_path: domain::webhook_path(a.id),
        create_time: Some(timestamp(a.created_at)),
        update_time: Some(timestamp(a.updated_at)),
    }
}

/// A storefront refusal the buyer should see as it is; anything else is the storefront being
/// unreachable (or our own bug).
fn from_storefront(status: Status) -> PaymentsError {
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => PaymentsError::Storefront(status),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {
            PaymentsError::StorefrontUnavailable
        }
        _ => PaymentsError::Internal(format!(
            "the storefront answered {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

impl From<PaymentsError> for Status {
    fn from(err: PaymentsError) -> Self {
        match err {
            PaymentsError::Invalid(violations) => errors::invalid_argument(&violations),
            PaymentsError::Unauthenticated => {
                errors::with_reason(Code::Unauthenticated, "UNAUTHENTICATED", err.to_string())
            }
            PaymentsError::OrderNotFound => errors::with_reason(Code::NotFound, "ORDER_NOT_FOUND", err.to_string()),
            PaymentsError::IdempotencyKeyReused => {
                errors::with_reason(Code::Aborted, "IDEMPOTENCY_KEY_REUSED", err.to_string())
            }
            PaymentsError::InvalidSignature => {
                errors::with_reason(Code::InvalidArgument, "INVALID_SIGNATURE", err.to_string())
            }
            PaymentsError::AccountNotFound => errors::with_reason(Code::NotFound, "ACCOUNT_NOT_FOUND", err.to_string()),
            PaymentsError::NotSeller => errors::with_reason(Code::PermissionDenied, "NOT_SELLER", err.to_string()),
            PaymentsError::NotStoreOwner => {
                errors::with_reason(Code::PermissionDenied, "NOT_STORE_OWNER", err.to_string())
            }
            PaymentsError::PaymentAccountNotFound => {
                errors::with_reason(Code::NotFound, "PAYMENT_ACCOUNT_NOT_FOUND", err.to_string())
            }
            PaymentsError::InvalidCredentials => {
                errors::with_reason(Code::FailedPrecondition, "INVALID_CREDENTIALS", err.to_string())
            }
            PaymentsError::NotPaid => errors::with_reason(Code::FailedPrecondition, "ORDER_NOT_PAID", err.to_string()),
            PaymentsError::Fulfilment(domain::StepRefused::NotPaid) => {
                errors::with_reason(Code::FailedPrecondition, "ORDER_NOT_PAID", err.to_string())
            }
            PaymentsError::Fulfilment(domain::StepRefused::OutOfOrder) => {
                errors::with_reason(Code::FailedPrecondition, "FULFILMENT_OUT_OF_ORDER", err.to_string())
            }
            PaymentsError::ServiceOnly => errors::with_reason(Code::PermissionDenied, "SERVICE_ONLY", err.to_string()),
            PaymentsError::WebhookNotStored => {
                errors::unavailable("WEBHOOK_STORAGE_UNAVAILABLE", err.to_string(), Duration::from_secs(5))
            }
            PaymentsError::GatewayRefused(_) => {
                errors::with_reason(Code::FailedPrecondition, "GATEWAY_REFUSED", err.to_string())
            }
            PaymentsError::GatewayUnavailable => {
                errors::unavailable("GATEWAY_UNAVAILABLE", err.to_string(), Duration::from_secs(2))
            }
            // Code, message and details (reason, product, how many are left) as the storefront said.
            PaymentsError::Storefront(status) => status,
            PaymentsError::StorefrontUnavailable => {
                errors::unavailable("STOREFRONT_UNAVAILABLE", err.to_string(), Duration::from_secs(1))
            }
            PaymentsError::Unavailable => {
                errors::unavailable("DATABASE_UNAVAILABLE", err.to_string(), Duration::from_secs(2))
            }
            PaymentsError::Internal(cause) => errors::internal(&cause),
        }
    }
}

/// The calling user: a service token alone acts for nobody.
fn caller<T>(request: &Request<T>) -> Result<Principal, PaymentsError> {
    principal(request).cloned().ok_or(PaymentsError::Unauthenticated)
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: currency.to_owned(),
    })
}

/// The proto enum of a status.
pub fn status_pb(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Paid => pb::OrderStatus::Paid,
        OrderStatus::Failed => pb::OrderStatus::Failed,
        OrderStatus::Expired => pb::OrderStatus::Expired,
        OrderStatus::PartiallyRefunded => pb::OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded => pb::OrderStatus::Refunded,
    }
}

fn order_pb(o: OrderRecord) -> pb::Order {
    pb::Order {
        id: o.id.to_string(),
        status: status_pb(o.status).into(),
        buyer_subject: o.buyer_subject,
        username: o.username,
        seller_subject: o.seller_subject,
        lines: o
            .lines
            .into_iter()
            .map(|l| pb::OrderLine {
                product_id: l.product_id.to_string(),
                title: l.title,
                quantity: l.quantity,
                unit_price: money(l.unit_price_minor, &o.currency),
            })
            .collect(),
        total: money(o.amount_minor, &o.currency),
        refunded: money(o.refunded_minor, &o.currency),
        checkout: Some(pb::Checkout {
            gateway: o.gateway,
            gateway_order_id: o.gateway_order_id,
            key_id: o.key_id,
            amount: money(o.amount_minor, &o.currency),
        }),
        expire_time: Some(timestamp(o.expires_at)),
        create_time: Some(timestamp(o.created_at)),
        update_time: Some(timestamp(o.updated_at)),
        paid_time: o.paid_at.map(timestamp),
        fulfilment: o.fulfilment.map(|f| f.as_str().to_owned()).unwrap_or_default(),
        reference: o.reference.unwrap_or_default(),
    }
}

fn refund_pb(r: RefundRecord) -> pb::Refund {
    let status = match r.status.as_str() {
        "requested" => pb::RefundStatus::Requested,
        "processed" => pb::RefundStatus::Processed,
        "failed" => pb::RefundStatus::Failed,
        _ => pb::RefundStatus::Unspecified,
    };
    pb::Refund {
        id: r.id.to_string(),
        order_id: r.order_id.to_string(),
        amount: money(r.amount_minor, &r.currency),
        status: status.into(),
        gateway_refund_id: r.gateway_refund_id.unwrap_or_default(),
        reason: r.reason,
        create_time: Some(timestamp(r.created_at)),
    }
}

#[tonic::async_trait]
impl pb::payments_service_server::PaymentsService for PaymentsGrpc {
    async fn create_deposit_order(
        &self,
        request: Request<pb::CreateDepositOrderRequest>,
    ) -> Result<Response<pb::CreateDepositOrderResponse>, Status> {
        if request.extensions().get::<ServiceCaller>().is_none() {
            return Err(PaymentsError::ServiceOnly.into());
        }
        let req = request.into_inner();
        let per_guest = req.per_guest.unwrap_or_default();
        let deposit = domain::Deposit::parse(
            &req.booking_id,
            &req.buyer_subject,
            &req.seller_subject,
            &req.restaurant_name,
            req.guests,
            per_guest.amount_minor,
            &per_guest.currency,
        )?;
        let order = self.deposit(&deposit).await?;
        tracing::info!(order_id = %order.id, booking_id = %deposit.booking_id, amount_minor = order.amount_minor, "deposit order");
        Ok(Response::new(pb::CreateDepositOrderResponse {
            order: Some(order_pb(order)),
        }))
    }

    async fn put_payment_account(
        &self,
        request: Request<pb::PutPaymentAccountRequest>,
    ) -> Result<Response<pb::PutPaymentAccountResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let secrets = domain::AccountSecrets::parse(&req.key_id, &req.key_secret, &req.webhook_secret)?;
        let seller = self.owned_store(&who, &req.username).await?;
        let credentials = crate::gateway::Credentials::new(&secrets.key_id, &secrets.key_secret);
        self.check_credentials(&credentials).await?;
        let (account, created) = self
            .store
            .connect_account(&self.accounts.keys, &seller, &req.username, &secrets)
            .await?;
        tracing::info!(account_id = %account.id, username = %req.username, key_id = %account.credentials.key_id, created, "payment account connected");
        Ok(Response::new(pb::PutPaymentAccountResponse {
            account: Some(account_pb(account)),
            created,
        }))
    }

    async fn get_payment_account(
        &self,
        request: Request<pb::GetPaymentAccountRequest>,
    ) -> Result<Response<pb::GetPaymentAccountResponse>, Status> {
        let who = caller(&request)?;
        let username = request.into_inner().username;
        let seller = self.owned_store(&who, &username).await?;
        let account = self
            .store
            .account_of_seller(&self.accounts.keys, &seller)
            .await?
            .ok_or(PaymentsError::PaymentAccountNotFound)?;
        Ok(Response::new(pb::GetPaymentAccountResponse {
            account: Some(account_pb(account)),
        }))
    }

    async fn fulfil_order(
        &self,
        request: Request<pb::FulfilOrderRequest>,
    ) -> Result<Response<pb::FulfilOrderResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let order_id = Uuid::parse_str(&req.order_id).map_err(|_| PaymentsError::OrderNotFound)?;
        let step = domain::Step::parse(&req.step)
            .ok_or_else(|| PaymentsError::invalid("step", "accept, ready, complete or reject"))?;
        if req.reason.chars().count() > 200 {
            return Err(PaymentsError::invalid("reason", "at most 200 characters").into());
        }
        let refund = match self
            .store
            .fulfil(order_id, &who.subject, domain::is_admin(&who.roles), step, &req.reason)
            .await
        {
            Err(e @ (PaymentsError::NotSeller | PaymentsError::OrderNotFound)) => {
                access_denied(&who, &format!("order {order_id}"), "fulfilment: not its seller");
                return Err(e.into());
            }
            other => other?,
        };
        tracing::info!(%order_id, step = %req.step, ?refund, "fulfilment step");
        let order = self.store.order(order_id).await?;
        Ok(Response::new(pb::FulfilOrderResponse {
            order: Some(order_pb(order)),
            refund_id: refund.map(|r| r.to_string()).unwrap_or_default(),
        }))
    }

    async fn refund_order(
        &self,
        request: Request<pb::RefundOrderRequest>,
    ) -> Result<Response<pb::RefundOrderResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let order_id = Uuid::parse_str(&req.order_id).map_err(|_| PaymentsError::OrderNotFound)?;
        if req.reason.chars().count() > 200 {
            return Err(PaymentsError::invalid("reason", "at most 200 characters").into());
        }
        let idem = domain::parse_idempotency_key(&req.idempotency_key)?
            .map(|k| Idempotency::new(k, &(&req.order_id, req.amount_minor, &req.reason)));
        let ask = RefundAsk {
            caller: &who.subject,
            admin: domain::is_admin(&who.roles),
            order_id,
            amount_minor: req.amount_minor,
            reason: &req.reason,
        };
        let refund = match self.store.request_refund(&ask, idem.as_ref()).await {
            Err(e @ (PaymentsError::NotSeller | PaymentsError::OrderNotFound)) => {
                access_denied(&who, &format!("order {order_id}"), "refund: not its seller");
                return Err(e.into());
            }
            other => other?,
        };
        tracing::info!(%order_id, refund_id = %refund.id, amount_minor = refund.amount_minor, "refund requested");
        let order = self.store.order(order_id).await?;
        Ok(Response::new(pb::RefundOrderResponse {
            order: Some(order_pb(order)),
            refund: Some(refund_pb(refund)),
        }))
    }

    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let buyer = caller(&request)?;
        let req = request.into_inner();
        let lines: Vec<(&str, i64)> = req.lines.iter().map(|l| (l.product_id.as_str(), l.quantity)).collect();
        let checkout = CheckoutRequest::parse(&req.username, &lines)?;
        let idem = domain::parse_idempotency_key(&req.idempotency_key)?.map(|k| Idempotency::new(k, &checkout));
        let order = self.checkout(&buyer.subject, &checkout, idem.as_ref()).await?;
        tracing::info!(
            order_id = %order.id,
            gateway_order_id = %order.gateway_order_id,
            amount_minor = order.amount_minor,
            currency = %order.currency,
            "order created"
        );
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(order_pb(order)),
        }))
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::GetOrderResponse>, Status> {
        let who = caller(&request)?;
        let order = self.visible_order(&who, &request.get_ref().order_id).await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order_pb(order)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let size = domain::page_size(req.page_size)?;
        let after = errors::parse_page_token(&req.page_token).map_err(|v| PaymentsError::Invalid(vec![v]))?;
        let admin = domain::is_admin(&who.roles);
        let of = if req.username.is_empty() {
            OrdersOf::Buyer(who.subject.clone())
        } else {
            // A store's orders show only where the caller is the seller (an admin sees them all):
            // anyone else's list is empty, never someone else's orders.
            OrdersOf::Store {
                username: req.username.clone(),
                seller: (!admin).then(|| who.subject.clone()),
            }
        };
        let (orders, next) = self.store.list_orders(&of, size, after).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.into_iter().map(order_pb).collect(),
            next_page_token: next.map(errors::page_token).unwrap_or_default(),
        }))
    }

    async fn verify_payment(
        &self,
        request: Request<pb::VerifyPaymentRequest>,
    ) -> Result<Response<pb::VerifyPaymentResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let order = self.visible_order(&who, &req.order_id).await?;
        // Checkout signed with the key secret of the account that created the order.
        let credentials = self.accounts.for_order(&self.store, order.payment_account_id).await?;
        let same_order = req.gateway_order_id.is_empty() || req.gateway_order_id == order.gateway_order_id;
        let valid = same_order
            && order.key_id == credentials.key_id
            && signature::checkout_is_valid(
                credentials.key_secret.expose().as_bytes(),
                &order.gateway_order_id,
                &req.gateway_payment_id,
                &req.signature,
            );
        if !valid {
            security_event(
                SecurityEvent::AccessDenied,
                &who.subject,
                &format!("order {}", order.id),
                "",
                "checkout signature does not match",
            );
            return Err(PaymentsError::InvalidSignature.into());
        }
        tracing::info!(order_id = %order.id, payment_id = %req.gateway_payment_id, "checkout signature verified");
        Ok(Response::new(pb::VerifyPaymentResponse {
            order: Some(order_pb(order)),
        }))
    }

    async fn receive_webhook(
        &self,
        request: Request<pb::ReceiveWebhookRequest>,
    ) -> Result<Response<pb::ReceiveWebhookResponse>, Status> {
        if request.extensions().get::<ServiceCaller>().is_none() {
            return Err(PaymentsError::ServiceOnly.into());
        }
        let req = request.into_inner();
        // The account is known from the URL before the body is read, so is its secret.
        let (account, secret) = if req.account_id.is_empty() {
            ("platform".to_owned(), self.accounts.platform.webhook_secret.clone())
        } else {
            let id = Uuid::parse_str(&req.account_id).map_err(|_| PaymentsError::AccountNotFound)?;
            let connected = self
                .store
                .account(&self.accounts.keys, id)
                .await?
                .ok_or(PaymentsError::AccountNotFound)?;
            (connected.id.to_string(), connected.webhook_secret)
        };
        let account = account.as_str();
        let secret = secret.expose().as_bytes();
        let signature = Some(req.signature.as_str()).filter(|s| !s.is_empty());
        if !signature::webhook_is_valid(secret, &req.body, signature) {
            security_event(
                SecurityEvent::AuthenticationFailed,
                "razorpay",
                &format!("webhook for account {account}"),
                "",
                if signature.is_none() {
                    "no X-Razorpay-Signature"
                } else {
                    "X-Razorpay-Signature does not match the body"
                },
            );
            return Err(PaymentsError::InvalidSignature.into());
        }
        // Only a genuine delivery is counted, by its account: a flood of forged ones costs an
        // HMAC each and takes nothing from Razorpay's budget.
        if let Some(limit) = &self.webhook_limit {
            let decision = limit.limiter.check("webhook", &limit.quota, account).await;
            if !decision.allowed {
                let wait = decision.retry_after.max(std::time::Duration::from_millis(1));
                security_event(
                    SecurityEvent::RateLimited,
                    "razorpay",
                    &format!("webhook for account {account}"),
                    "",
                    "webhook",
                );
                return Err(thali_platform::errors::resource_exhausted(
                    "RATE_LIMITED",
                    format!(
                        "{} webhook deliveries per {} s allowed for this account; try again in {} ms",
                        limit.quota.limit,
                        limit.quota.period.as_secs(),
                        wait.as_millis()
                    ),
                    wait,
                ));
            }
        }
        let event_id = req.event_id.as_str();
        if event_id.is_empty() || event_id.len() > 64 || !event_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                PaymentsError::invalid("event_id", "X-Razorpay-Event-Id: 1 to 64 visible ASCII characters").into(),
            );
        }
        match self.store.take_webhook(account, event_id, &req.body).await {
            Ok(taken) => {
                tracing::info!(event_id, ?taken, "webhook taken");
                Ok(Response::new(pb::ReceiveWebhookResponse {
                    duplicate: taken == Taken::Duplicate,
                    dead_lettered: false,
                }))
            }
            Err(failure) => {
                tracing::warn!(event_id, error = %failure, "webhook processing failed; dead-lettering it");
                match self
                    .store
                    .dead_letter(account, event_id, &req.body, &failure.to_string())
                    .await
                {
                    Ok(()) => Ok(Response::new(pb::ReceiveWebhookResponse {
                        duplicate: false,
                        dead_lettered: true,
                    })),
                    Err(stored) => {
                        tracing::error!(event_id, error = %stored, "webhook neither processed nor dead-lettered; Razorpay must deliver it again");
                        Err(PaymentsError::WebhookNotStored.into())
                    }
                }
            }
        }
    }
}

/// The events payments takes: a booking's paid deposit to give back.
pub const SUBSCRIBES_TO: &[&str] = &["booking.deposit_refund_requested", thali_platform::privacy::ERASED];

#[tonic::async_trait]
impl thali_platform::events::Sink for PaymentsGrpc {
    /// Refunds a booking's deposit in full, once per booking (the booking id keys the request):
    /// a redelivery answers the refund already asked; a deposit with nothing left to refund is
    /// done.
    async fn take(&self, event: thali_proto::events::v1::Event) -> Result<bool, Status> {
        use thali_proto::events::v1::event::Payload;
        if let Some(Payload::AccountErased(p)) = &event.payload {
            let account = Uuid::parse_str(&p.account_id)
                .map_err(|_| Status::invalid_argument("account_erased.account_id is not a UUID"))?;
            let event_id =
                Uuid::parse_str(&event.id).map_err(|_| Status::invalid_argument("event.id is not a UUID"))?;
            return Ok(self.store.erase_account(event_id, account, chrono::Utc::now()).await?);
        }
        let Some(Payload::BookingDepositRefundRequested(p)) = &event.payload else {
            return Err(Status::invalid_argument(
                "payments takes booking.deposit_refund_requested and account.erased only",
            ));
        };
        let order_id = Uuid::parse_str(&p.order_id)
            .map_err(|_| Status::invalid_argument("booking_deposit_refund_requested.order_id is not a UUID"))?;
        let reason: String = p.reason.chars().take(200).collect();
        let idem = Idempotency::new(format!("deposit-refund:{}", p.booking_id), &(&p.order_id));
        let ask = RefundAsk {
            caller: "service:booking",
            admin: true,
            order_id,
            amount_minor: None,
            reason: &reason,
        };
        match self.store.request_refund(&ask, Some(&idem)).await {
            Ok(refund) => {
                tracing::info!(%order_id, booking_id = %p.booking_id, refund_id = %refund.id, "deposit refund requested");
                Ok(true)
            }
            // Nothing left to refund (the seller refunded it already).
            Err(PaymentsError::Invalid(_)) => {
                tracing::info!(%order_id, booking_id = %p.booking_id, "deposit already refunded");
                Ok(false)
            }
            Err(PaymentsError::OrderNotFound) => Err(Status::invalid_argument(format!("no deposit order {order_id}"))),
            Err(e) => Err(e.into()),
        }
    }
}
