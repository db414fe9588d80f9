//! Payments service (issue 10), being built in steps. It holds the domain (the order state
//! machine: a pure function from an order and a gateway event to the next order and the effects
//! to carry out), the checks of Razorpay's signatures, the gateway adapter (a [`gateway::Gateway`]
//! trait and its Razorpay implementation over HTTPS) and a Razorpay-compatible [`sandbox`]
//! gateway. The store, gRPC service and workers come next.
#![forbid(unsafe_code)]

pub mod domain;
pub mod gateway;
pub mod sandbox;
pub mod signature;
