//! Certificates for the TLS tests (rcgen, ring): CAs, server and client
//! certificates written as PEM files, and a test-side TLS client built
//! with the daemon's own loader.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use metalbondd::tls::{ClientFiles, ClientTls};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpStream;

/// A certificate authority.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its key as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf certificate (DER), to compare with what a peer presents.
    pub der: Vec<u8>,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).unwrap();
        path.to_path_buf()
    }

    /// A certificate for `names` (DNS names or IP literals; the first is
    /// also the subject CN), expired since 2021 if `expired`, written to
    /// `dir/NAME.pem` and `dir/NAME.key`.
    pub fn issue(&self, dir: &Path, file: &str, names: &[&str], expired: bool) -> Issued {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}

/// Connects to `addr` and runs a TLS handshake trusting `ca` for the name
/// `127.0.0.1`, presenting `client` if given. The stream, or the error.
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tls = ClientTls::load(ClientFiles {
        ca: ca.to_path_buf(),
        cert_key: client.map(|c| (c.cert.clone(), c.key.clone())),
    })
    .unwrap();
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(addr.ip().to_string()).unwrap();
    tokio::time::timeout(
        super::T,
        tokio_rustls::TlsConnector::from(tls.config()).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|_| panic!("TLS handshake with {addr} timed out"))
}

/// The `[server]` lines of a TLS listener on 127.0.0.1 (any port) with
/// `server`'s certificate, client certificates required and checked
/// against `ca` (append a `[policy]` after it).
pub fn server_tls_toml(server: &Issued, ca: &Path) -> String {
    format!(
        "[server]\ntls_listen = [\"127.0.0.1:0\"]\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\n",
        server.cert.display(),
        server.key.display(),
        ca.display()
    )
}

/// Starts `metalbondd client` (its config, API socket `client.sock` and
/// state in `dir`) connected over TLS to `server`, trusting `ca` and
/// presenting `cert`, subscribed to `vni` and announcing `announce`; waits
/// until it runs (not until its session is up). Returns it and its API
/// socket.
pub fn tls_client(
    dir: &Path,
    server: SocketAddr,
    ca: &Path,
    cert: &Issued,
    vni: u32,
    announce: &str,
) -> (super::Daemon, PathBuf) {
    let toml = dir.join("client.toml");
    std::fs::write(
        &toml,
        format!(
            "[client]\nservers = [\"tls://{server}\"]\nsubscribe = [{vni}]\nannounce = [\"{announce}\"]\n\
             [client.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.display(),
            cert.cert.display(),
            cert.key.display()
        ),
    )
    .unwrap();
    super::Daemon::start_client(dir, &["--config", toml.to_str().unwrap()])
}
