//! TLS settings shared by the two HTTPS clients of the daemon: the OpenCTI client (stream, files,
//! API) and the S3 client.
//!
//! Both are `reqwest` clients on rustls (ring), so one [`TlsOptions`] means the same thing for
//! both, and there is a single TLS stack in the binary:
//!
//! * `verify: true` (the default): the server certificate must chain to a trusted root, and its
//!   name must match the host. Trusted roots are the bundled webpki roots, the system's roots,
//!   and every certificate of `ca_file` when one is given (for a private or self-signed CA).
//! * `verify: false` (`MINIO_CERT_CHECK=false`): any certificate is accepted, for any host name.
//!   The connection is still encrypted but no longer authenticated. A warning is logged, once per
//!   process, the first time such a client is built.
//!
//! A CA file that cannot be read, holds no certificate or holds a malformed one is refused when
//! the client is built, with an error naming the file: a typo in a path must not silently fall
//! back to the system roots.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How a client checks the server's certificate. Shared by the OpenCTI and S3 clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Check the server certificate (chain and host name). `false` accepts any certificate.
    pub verify: bool,
    /// A PEM file of extra trusted CA certificates, added to the webpki and system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for TlsOptions {
    /// Verification on, no extra CA.
    fn default() -> Self {
        Self {
            verify: true,
            ca_file: None,
        }
    }
}

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("cannot read the CA file {}: {source}", path.display())]
    ReadCaFile {
        /// The file named in the configuration.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file was read but holds no PEM certificate.
    #[error(
        "the CA file {} holds no PEM certificate (expected a '-----BEGIN CERTIFICATE-----' block)",
        path.display()
    )]
    NoCertificate {
        /// The file named in the configuration.
        path: PathBuf,
    },
    /// The CA file holds a PEM block that is not a valid certificate.
    #[error("the CA file {} holds an invalid certificate: {detail}", path.display())]
    InvalidCertificate {
        /// The file named in the configuration.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// A `reqwest::ClientBuilder` with the TLS part configured from `options`: rustls, the trusted
/// roots (webpki + system + `ca_file`) or no verification at all.
///
/// The caller adds the rest (timeouts, user agent, redirect policy, proxy) and builds. Reads and
/// parses the CA file every time it is called; call it once per client.
///
/// # Errors
/// [`TlsError`] when the CA file cannot be read, holds no certificate or a malformed one.
pub fn reqwest_client_builder(options: &TlsOptions) -> Result<reqwest::ClientBuilder, TlsError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(true);
    if let Some(path) = &options.ca_file {
        for der in read_ca_file(path)? {
            let certificate = reqwest::Certificate::from_der(der.as_ref()).map_err(|err| {
                TlsError::InvalidCertificate {
                    path: path.clone(),
                    detail: err.to_string(),
                }
            })?;
            builder = builder.add_root_certificate(certificate);
        }
    }
    if !options.verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// The DER certificates of a PEM CA file, each checked to be a usable trust anchor.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCaFile {
        path: path.to_owned(),
        source,
    })?;
    let mut certificates = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        let der = item.map_err(|err| TlsError::InvalidCertificate {
            path: path.to_owned(),
            detail: err.to_string(),
        })?;
        // Parse it as a trust anchor now, so a broken file is reported here, with its name,
        // rather than as an opaque error when the HTTP client is built.
        rustls::RootCertStore::empty()
            .add(der.clone())
            .map_err(|err| TlsError::InvalidCertificate {
                path: path.to_owned(),
                detail: err.to_string(),
            })?;
        certificates.push(der);
    }
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_refused_with_its_name() {
        let options = TlsOptions {
            verify: true,
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
        };
        let err = reqwest_client_builder(&options)
            .err()
            .map(|e| e.to_string());
        let message = err.unwrap_or_default();
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        assert!(message.contains("cannot read"), "{message}");
    }

    #[test]
    fn a_ca_file_without_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let options = TlsOptions {
            verify: true,
            ca_file: Some(path),
        };
        let err = reqwest_client_builder(&options).err();
        assert!(
            matches!(err, Some(TlsError::NoCertificate { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn a_malformed_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let options = TlsOptions {
            verify: true,
            ca_file: Some(path),
        };
        let err = reqwest_client_builder(&options).err();
        assert!(
            matches!(err, Some(TlsError::InvalidCertificate { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn default_options_build_a_client() {
        let builder = reqwest_client_builder(&TlsOptions::default()).unwrap();
        assert!(builder.build().is_ok());
    }
}
