//! `thali dev-certs`: a local certificate authority and one certificate for every Thali part
//! (ADR 0028), for development, tests and clusters without a certificate manager. The CA is made
//! once; each run issues a new leaf certificate from it (run it again to rotate: listeners pick
//! the new files up without a restart).
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The names every part is reached by: loopback, the Compose service names and the Kubernetes
/// headless Services.
pub const DEFAULT_NAMES: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "facade",
    "identity",
    "storefront",
    "booking",
    "payments",
    "notifications",
    "identity-headless",
    "storefront-headless",
    "booking-headless",
    "payments-headless",
    "notifications-headless",
];

/// What `write` produced.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Thali development CA");
    dn.push(DnType::OrganizationName, "Thali");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    Ok(params)
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Makes the CA in `dir` if there is none, then issues a new certificate (server and client
/// use) for `DEFAULT_NAMES` plus `extra` names. Files: `ca.pem`, `ca-key.pem`, `cert.pem` (the
/// leaf, then the CA), `key.pem`; keys are mode 0600. The new pair replaces the old one by
/// rename, so a listener never reads half a file.
pub fn write(dir: &Path, extra: &[String]) -> anyhow::Result<DevCerts> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_pem, ca_key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let params = ca_params()?;
    let ca_key = if ca_key_path.exists() {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_file(&ca_key_path)
            .with_context(|| format!("reading {}", ca_key_path.display()))?;
        KeyPair::try_from(der.secret_der()).context("ca-key.pem")?
    } else {
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_secret(&ca_key_path, &pem("PRIVATE KEY", &key.serialize_der()))?;
        std::fs::write(&ca_pem, pem("CERTIFICATE", cert.der()))?;
        key
    };
    let issuer = Issuer::new(params, ca_key);
    let names: Vec<String> = DEFAULT_NAMES
        .iter()
        .map(|n| (*n).to_owned())
        .chain(extra.iter().cloned())
        .collect();
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name.push(DnType::CommonName, "thali");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = rcgen::date_time_ymd(2025, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let leaf_key = KeyPair::generate()?;
    let cert = leaf.signed_by(&leaf_key, &issuer)?;
    let ca_text = std::fs::read_to_string(&ca_pem).with_context(|| format!("reading {}", ca_pem.display()))?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert_tmp, key_tmp) = (dir.join(".cert.pem.new"), dir.join(".key.pem.new"));
    write_secret(&key_tmp, &pem("PRIVATE KEY", &leaf_key.serialize_der()))?;
    std::fs::write(&cert_tmp, pem("CERTIFICATE", cert.der()) + &ca_text)?;
    std::fs::rename(&key_tmp, &key_path)?;
    std::fs::rename(&cert_tmp, &cert_path)?;
    Ok(DevCerts {
        ca: ca_pem,
        cert: cert_path,
        key: key_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed((year, month, day): (i32, u8, u8)) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["thali.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(1990, 6, 1);
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn the_end_of_a_certificate_is_read_in_both_time_forms() {
        // UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280), and a UTCTime year ≥ 50
        // that is in the 1900s.
        let cases = [
            ((2030, 1, 1), 1_893_456_000),
            ((2055, 3, 4), 2_687_731_200),
            ((1999, 12, 31), 946_598_400),
        ];
        for ((y, m, d), want) in cases {
            let der = self_signed((y, m, d));
            assert_eq!(thali_platform::tls::not_after(&der), Some(want), "{y}-{m}-{d}");
        }
        // The development leaf, as issued by `write` and read from its PEM file.
        let dir = std::env::temp_dir().join(format!("thali-not-after-{}", uuid::Uuid::now_v7()));
        let certs = write(&dir, &[]).unwrap();
        let leaf = thali_platform::tls::read_certs(&certs.cert).unwrap();
        assert_eq!(thali_platform::tls::not_after(&leaf[0]), Some(1_893_456_000));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bytes_that_are_not_a_whole_certificate_have_no_end() {
        let der = self_signed((2030, 1, 1));
        for cut in [0, 1, 2, 10, der.len() / 3, der.len() / 2] {
            assert_eq!(thali_platform::tls::not_after(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(thali_platform::tls::not_after(b"not a certificate"), None);
        assert_eq!(
            thali_platform::tls::not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
