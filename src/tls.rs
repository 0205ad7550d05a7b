//! TLS for the coordinator and its clients: rustls with the aws-lc-rs provider, PEM files.
//!
//! - Server ([`server_config`]): the coordinator's certificate chain and private key, read
//!   from PEM files; every failure names the file and says what to do.
//! - Clients ([`client_config`]): pacpoold's link and `pacpool admin` trust the system's
//!   certificate store (`/etc/ssl/certs` on Arch, through `rustls-native-certs`) plus an
//!   optional extra CA file, for a coordinator whose certificate comes from a private CA.
//!   There is no way to turn verification off.
//! - [`certificate_hint`] turns a failed handshake buried in an error chain into one sentence
//!   that says what is wrong with the certificate and how to fix it.
//!
//! The provider is always passed explicitly (never the process-wide default), so it does
//! not matter what else in the process installed one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "TLS certificate file {path}: {why}\nto fix: point `cert` at a PEM file holding the server certificate (then any intermediates), each starting with -----BEGIN CERTIFICATE-----"
    )]
    Cert { path: PathBuf, why: String },
    #[error(
        "TLS private key file {path}: {why}\nto fix: point `key` at the PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC) that belongs to the certificate; it must be readable by the coordinator's user"
    )]
    Key { path: PathBuf, why: String },
    #[error(
        "TLS certificate {cert} and key {key} cannot be used together: {source}\nto fix: give the key that was generated with this certificate"
    )]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "CA file {path}: {why}\nto fix: give a PEM file with the CA certificate that signed the coordinator's certificate (-----BEGIN CERTIFICATE-----)"
    )]
    CaFile { path: PathBuf, why: String },
    #[error("cannot set up TLS: {0}")]
    Setup(#[source] rustls::Error),
}

/// The crypto provider used everywhere in pacpool.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem_why(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("cannot read it: {io}"),
        Error::NoItemsFound => format!("it holds no {what} in PEM form"),
        other => format!("it is not valid PEM: {other:?}"),
    }
}

/// Reads every certificate in a PEM file; at least one must be there.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    // Read first, so a missing file says so rather than "no items".
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_why(&e, "certificate"))?;
    if certs.is_empty() {
        return Err("it holds no certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// The coordinator's TLS configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certs(cert).map_err(|why| TlsError::Cert {
        path: cert.to_owned(),
        why,
    })?;
    let key_bytes = std::fs::read(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        why: format!("cannot read it: {e}"),
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        why: pem_why(&e, "private key"),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|source| TlsError::Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    // axum serves HTTP/1.1 only (WebSockets upgrade from it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that trusts the system's certificate store and, when given, the
/// CA certificates in `extra_ca` (PEM).
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping part of the system certificate store");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates loaded");
    if let Some(path) = extra_ca {
        let certs = read_certs(path).map_err(|why| TlsError::CaFile {
            path: path.to_owned(),
            why,
        })?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: path.to_owned(),
                why: format!("a certificate in it is unusable as a CA: {e}"),
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// If `err` (or anything in its chain) is a failed TLS handshake, one sentence on what is
/// wrong and how to fix it; `ca_hint` says how this program is given an extra CA (e.g.
/// "--ca-file FILE").
pub fn certificate_hint(err: &(dyn std::error::Error + 'static), ca_hint: &str) -> Option<String> {
    certificate_hint_for(err, "the coordinator", ca_hint)
}

/// [`certificate_hint`] for a connection to `peer` ("the coordinator", "the database").
pub fn certificate_hint_for(
    err: &(dyn std::error::Error + 'static),
    peer: &str,
    ca_hint: &str,
) -> Option<String> {
    let tls = find_rustls(err)?;
    use rustls::{CertificateError, Error};
    Some(match tls {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "{peer}'s TLS certificate is not signed by a CA this machine trusts (unknown issuer): give the CA certificate with {ca_hint}, or add it to the system's trust store"
        ),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("{peer}'s TLS certificate is not valid for the host name in the URL: use the name (or IP address) the certificate was issued for"),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("{peer}'s TLS certificate has expired: renew it"),
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => format!("{peer}'s TLS certificate is not valid yet: check the clocks of both machines"),
        Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            if peer == "the coordinator" =>
        {
            "the server did not answer with TLS: if the coordinator has no [tls] configured, use an http:// URL".to_owned()
        }
        Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            format!("{peer} did not answer with TLS")
        }
        other => format!("the TLS connection to {peer} failed: {other}"),
    })
}

/// A failed connection in one line: the certificate hint when the handshake failed,
/// otherwise the error and its causes (skipping text already shown).
pub fn connect_error_text(err: &(dyn std::error::Error + 'static), ca_hint: &str) -> String {
    connect_error_text_for(err, "the coordinator", ca_hint)
}

/// [`connect_error_text`] for a connection to `peer`.
pub fn connect_error_text_for(
    err: &(dyn std::error::Error + 'static),
    peer: &str,
    ca_hint: &str,
) -> String {
    if let Some(hint) = certificate_hint_for(err, peer, ca_hint) {
        return hint;
    }
    crate::display::std_error_line(err)
}

/// The first `rustls::Error` in a chain, also inside `std::io::Error`s (whose `source()`
/// skips the error they wrap).
fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                return Some(t);
            }
            if let Some(t) = find_rustls(inner) {
                return Some(t);
            }
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing).unwrap_err().to_string();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = server_config(&junk, &junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = client_config(Some(&junk)).unwrap_err().to_string();
        assert!(e.starts_with("CA file") && e.contains("junk.pem"), "{e}");
        // Without an extra CA the system store alone is fine (even an empty one).
        client_config(None).unwrap();
    }

    #[test]
    fn hints_find_rustls_errors_inside_io_errors() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let hint = certificate_hint(&io, "--ca-file FILE").unwrap();
        assert!(hint.contains("--ca-file FILE"), "{hint}");
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(certificate_hint(&plain, "x").is_none());
    }
}
