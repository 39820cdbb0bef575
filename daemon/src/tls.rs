//! TLS on MetalBond sessions (ADR 0026): rustls configurations built from
//! PEM files, the peer certificate's identity, and why a handshake failed.
//!
//! The handshake runs through tokio-rustls; the session then runs on the
//! plain socket with the rustls connection used sans-I/O by the link
//! driver ([`crate::link`]). Only the ring provider is built in, so a C
//! compiler is all the build needs.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};

/// How long a TLS handshake may take before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Plaintext rustls accepts ahead of the socket: the link driver hands it
/// only what fits, so its queue accounting stays exact.
pub const SEND_BUFFER_LIMIT: usize = 64 * 1024;

/// The files of the server's TLS listeners (`[server.tls]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to; `None`: no
    /// client certificate asked for.
    pub client_ca: Option<PathBuf>,
}

/// The files of the client role's TLS (`[client.tls]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// CA certificates (PEM) the servers' certificates must chain to.
    pub ca: PathBuf,
    /// Certificate chain and key presented to servers that ask for one.
    pub cert_key: Option<(PathBuf, PathBuf)>,
}

/// A loaded configuration and the files it came from. Compared by the
/// files only: a reload reads the files again whether or not they are the
/// same paths. Clones share `current`, which a reload replaces in place
/// for every listener or connection task holding it.
#[derive(Clone)]
pub struct Loaded<F, C> {
    /// Where it came from.
    pub files: F,
    /// The rustls configuration new handshakes use.
    pub current: Arc<Current<C>>,
}

impl<F, C> Loaded<F, C> {
    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<C> {
        self.current.get()
    }

    /// Makes handshakes from now on use `newer`'s configuration (a reload
    /// read the files again); sessions keep theirs.
    pub fn replace_with(&self, newer: &Self) {
        self.current.set(newer.config());
    }
}

impl<F: PartialEq, C> PartialEq for Loaded<F, C> {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl<F: fmt::Debug, C> fmt::Debug for Loaded<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.files.fmt(f)
    }
}

/// The server's TLS.
pub type ServerTls = Loaded<ServerFiles, rustls::ServerConfig>;
/// The client role's TLS.
pub type ClientTls = Loaded<ClientFiles, rustls::ClientConfig>;

/// A configuration that a reload replaces while connections use the old
/// one: new handshakes take [`Current::get`].
#[derive(Debug)]
pub struct Current<C>(RwLock<Arc<C>>);

impl<C> Current<C> {
    /// Holds `config`.
    pub fn new(config: Arc<C>) -> Self {
        Self(RwLock::new(config))
    }

    /// The configuration for the next handshake.
    pub fn get(&self) -> Arc<C> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces it; handshakes under way and sessions keep the old one.
    pub fn set(&self, config: Arc<C>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// ring, not aws-lc: it builds with a C compiler alone (ADR 0026). rustls
/// deprecates it for lacking post-quantum key exchange, which ring lacks.
///
/// AES-128-GCM first (ring's default order starts with AES-256-GCM): the
/// suite every TLS 1.3 peer must support, and 10 AES rounds per block
/// instead of 14 on the fan-out's hot path, where every byte sent to every
/// subscriber is encrypted separately.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read the {what}: {e}", path.display()))
}

/// The certificates of a PEM file (at least one).
fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM in the {what}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: the {what} has no CERTIFICATE block",
            path.display()
        ));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| format!("{}: no usable private key in it: {e}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path, "CA file")? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: bad CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

impl ServerTls {
    /// Reads the files; the error names the file that is missing or bad.
    pub fn load(files: ServerFiles) -> Result<Self, String> {
        let chain = certs(&files.cert, "certificate file")?;
        let key = key(&files.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("{} with {}: {e}", files.cert.display(), files.key.display()))?;
        // Sessions do not resume: no tickets to queue after the handshake.
        config.send_tls13_tickets = 0;
        // Our order (AES-128-GCM first, see `provider`), whatever the
        // client prefers.
        config.ignore_client_order = true;
        Ok(Self {
            files,
            current: Arc::new(Current::new(Arc::new(config))),
        })
    }
}

impl ClientTls {
    /// Reads the files; the error names the file that is missing or bad.
    pub fn load(files: ClientFiles) -> Result<Self, String> {
        let roots = roots(&files.ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
        let config = match &files.cert_key {
            Some((cert, key_path)) => builder
                .with_client_auth_cert(certs(cert, "certificate file")?, key(key_path)?)
                .map_err(|e| format!("{} with {}: {e}", cert.display(), key_path.display()))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            files,
            current: Arc::new(Current::new(Arc::new(config))),
        })
    }
}

/// The names a certificate speaks for, lower-cased: its DNS subject
/// alternative names, or its subject common name when it has none. Empty
/// when the certificate does not parse (rustls verified it already).
pub fn identities(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// Why a handshake failed: the `reason` label of
/// `metalbondd_tls_handshake_failures_total`.
pub fn failure_reason(e: &io::Error) -> &'static str {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "expired",
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            _ => "bad_certificate",
        },
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::InappropriateMessage { .. })
        | Some(rustls::Error::InappropriateHandshakeMessage { .. }) => "not_tls",
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(_) => "other",
        None if e.kind() == io::ErrorKind::TimedOut => "timeout",
        None => "io",
    }
}

/// Every `reason` of [`failure_reason`], for the metrics.
pub const FAILURE_REASONS: &[&str] = &[
    "expired",
    "unknown_ca",
    "bad_certificate",
    "no_certificate",
    "not_tls",
    "alert",
    "other",
    "timeout",
    "io",
];
