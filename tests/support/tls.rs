//! A throwaway certificate authority for TLS tests: a self-signed CA, a server certificate it
//! signed for `localhost` and `127.0.0.1`, the CA written to a PEM file (what a user passes as the
//! CA file), and a rustls server configuration for test servers.
//!
//! ```ignore
//! let ca = TestCa::new();
//! let s3 = TestS3::start_with_tls(ca.server_config());
//! let options = TlsOptions { verify: true, ca_file: Some(ca.ca_file().to_owned()) };
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and one server certificate it signed. The files live as long as the value.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// Generates a fresh CA (its own name and key each time, so two `TestCa`s do not trust
    /// each other) and a server certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "opencti-stream-exporter test CA {} {serial}",
                std::process::id()
            ),
        );
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().expect("server key");
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server certificate");

        let dir = tempfile::tempdir().expect("temp dir for the CA file");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write the CA file");
        Self {
            dir,
            ca_file,
            chain: vec![server.der().clone(), ca.der().clone()],
            key_der: server_key.serialize_der(),
        }
    }

    /// The PEM file holding the CA certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A directory that lives as long as this CA, for other test files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A rustls server configuration presenting the server certificate (and the CA).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), key)
        .expect("server certificate and key");
        Arc::new(config)
    }
}
