//! Compiles the contracts under `proto/` with protox (pure Rust, no system protoc) and writes the
//! descriptor set that server reflection serves.
use std::{env, path::PathBuf};

const FILES: &[&str] = &[
    "thali/audit/v1/audit.proto",
    "thali/booking/v1/booking.proto",
    "thali/common/v1/money.proto",
    "thali/events/v1/events.proto",
    "thali/identity/v1/identity.proto",
    "thali/notifications/v1/notifications.proto",
    "thali/payments/v1/payments.proto",
    "thali/privacy/v1/privacy.proto",
    "thali/storefront/v1/storefront.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("thali_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
