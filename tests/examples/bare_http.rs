//! The physical limit of the HTTP layer on this machine: a bare axum handler answering a fixed
//! JSON body (the same size as a real storefront answer), with nothing else in the path. The
//! load test drives it side by side with the real platform.
//!
//! `cargo run --release -p thali-tests --example bare_http -- 127.0.0.1:18099 body.json`
use axum::{Router, http::header, routing::get};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18099".to_owned());
    let body = std::fs::read(args.next().expect("usage: bare_http ADDR BODY_FILE")).expect("reading the body file");
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    let app = Router::new().route(
        "/api/v1/store/{username}",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("binding");
    println!("bare handler on http://{addr} ({} bytes per answer)", body.len());
    axum::serve(listener, app).await.expect("serving");
}
