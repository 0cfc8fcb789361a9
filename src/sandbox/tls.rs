//! The simulator's TLS: a test CA generated at start (`rcgen`), a server certificate for
//! loopback, and the merchant's API client certificate that `secapi/*` requires.
//!
//! Like WeChat's front end (nginx with an optional client certificate), the TLS listener
//! accepts connections with or without a client certificate — `pay/*` needs none — but a
//! certificate that is presented must chain to the test CA, and `secapi/pay/refund` refuses a
//! connection that presented none with WeChat's HTTP 400 "No required SSL certificate was sent".
//! Nothing here is secret: the material lives as long as the process and is written, for
//! coinpay and for curl, into a directory of the caller's choosing.
//!
//! To use it (as `coinpay sandbox --tls-bind --tls-dir` does, and as `serve --sandbox` can):
//! [`SandboxTls::generate`], [`SandboxTls::write_files`], then [`serve_tls`] with a clone of the
//! same [`Sandbox`] that is mounted over plain HTTP (one simulated WeChat, two listeners), and
//! point `WECHAT_PAY_API_BASE` at `https://{addr}` with the three files as
//! `WECHAT_PAY_CA_PATH` / `WECHAT_PAY_CERT_PATH` / `WECHAT_PAY_KEY_PATH`. In-process clients can
//! skip the files: [`SandboxTls::ca_der`] and [`SandboxTls::merchant_identity`].

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::{App, HttpServer};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use super::Sandbox;
use crate::wechat::tls::{ClientIdentity, TlsError};

/// File names written by [`SandboxTls::write_files`].
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "apiclient_cert.pem";
pub const KEY_FILE: &str = "apiclient_key.pem";

#[derive(thiserror::Error, Debug)]
pub enum SandboxTlsError {
    #[error("cannot generate the sandbox certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("sandbox TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("sandbox client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(transparent)]
    Identity(#[from] TlsError),
}

/// Connection data set by the TLS listener when the peer presented a certificate that chains
/// to the test CA (rustls has verified it by then).
#[derive(Clone, Copy, Debug)]
pub(super) struct ClientCertPresented;

/// The generated CA, server identity and merchant identity.
pub struct SandboxTls {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    merchant_cert_der: CertificateDer<'static>,
    merchant_cert_pem: String,
    merchant_key_pem: String,
    merchant_key_der: Vec<u8>,
}

impl std::fmt::Debug for SandboxTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxTls").finish_non_exhaustive()
    }
}

/// Where [`SandboxTls::write_files`] put the PEM files (the values of `WECHAT_PAY_CA_PATH`,
/// `WECHAT_PAY_CERT_PATH` and `WECHAT_PAY_KEY_PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxTlsFiles {
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl SandboxTls {
    /// A fresh CA; a server certificate for `localhost`, `127.0.0.1` and `::1`; and a client
    /// certificate whose CN is `mch_id`, as WeChat's apiclient_cert.pem has.
    pub fn generate(mch_id: &str) -> Result<Self, SandboxTlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "coinpay sandbox test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut server_params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "coinpay sandbox");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, mch_id);
        client_params
            .distinguished_name
            .push(DnType::OrganizationName, "coinpay sandbox merchant");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client_params.use_authority_key_identifier_extension = true;
        let client_key = KeyPair::generate()?;
        let client_cert = client_params.signed_by(&client_key, &issuer)?;

        Ok(SandboxTls {
            ca_der: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            server_chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
            server_key: server_key.serialize_der(),
            merchant_cert_der: client_cert.der().clone(),
            merchant_cert_pem: client_cert.pem(),
            merchant_key_pem: client_key.serialize_pem(),
            merchant_key_der: client_key.serialize_der(),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    pub fn merchant_cert_pem(&self) -> &str {
        &self.merchant_cert_pem
    }

    pub fn merchant_key_pem(&self) -> &str {
        &self.merchant_key_pem
    }

    /// The merchant identity in memory, for in-process clients.
    pub fn merchant_identity(&self) -> Result<ClientIdentity, TlsError> {
        ClientIdentity::from_der(
            vec![self.merchant_cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.merchant_key_der.clone())),
        )
    }

    /// Writes `ca.pem`, `apiclient_cert.pem` and `apiclient_key.pem` (mode 0600) into `dir`,
    /// creating it if needed.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<SandboxTlsFiles> {
        std::fs::create_dir_all(dir)?;
        let files = SandboxTlsFiles {
            ca_path: dir.join(CA_FILE),
            cert_path: dir.join(CERT_FILE),
            key_path: dir.join(KEY_FILE),
        };
        std::fs::write(&files.ca_path, &self.ca_pem)?;
        std::fs::write(&files.cert_path, &self.merchant_cert_pem)?;
        write_private(&files.key_path, self.merchant_key_pem.as_bytes())?;
        Ok(files)
    }

    /// Server authentication with the generated certificate; client certificates optional but
    /// verified against the test CA when presented.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, SandboxTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)?)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Marks connections whose peer presented a (verified) client certificate.
fn on_connect(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = conn.downcast_ref::<Tls>()
        && tls
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty())
    {
        ext.insert(ClientCertPresented);
    }
}

/// The simulator at "/" over TLS on `bind` (port 0 gets a free port), not started: returns the
/// server (spawn or await it) and the bound address. `https://{addr}` is then a
/// `WECHAT_PAY_API_BASE` for every pay call, refunds included, with the files of
/// [`SandboxTls::write_files`] as `WECHAT_PAY_CA_PATH` / `_CERT_PATH` / `_KEY_PATH`.
pub fn serve_tls(
    bind: SocketAddr,
    sandbox: Sandbox,
    tls: &SandboxTls,
) -> Result<(actix_web::dev::Server, SocketAddr), std::io::Error> {
    let config = tls.server_config().map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(bind)?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        let sb = sandbox.clone();
        App::new().configure(move |c| sb.configure(c))
    })
    .on_connect(on_connect)
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .listen_rustls_0_23(listener, config)?
    .run();
    Ok((server, addr))
}
