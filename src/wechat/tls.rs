//! TLS for WeChat Pay calls: the merchant's API client certificate for `secapi/*` (mutual TLS,
//! wechatpy-next.md §1.1) and an optional extra trusted root for a private or test endpoint.
//!
//! Two `rustls::ClientConfig`s, hence two awc clients with two connection pools: one without a
//! client identity for `pay/*`, one with it for `secapi/*`. They are never shared, so a pooled
//! connection opened without the certificate cannot be reused for a refund (the WxJava #3640
//! bug). The extra root (`WECHAT_PAY_CA_PATH`) is added to both, on top of the webpki roots.
//!
//! PEM parsing is `rustls-pki-types`' and the cert/key consistency check is rustls'
//! (`CertifiedKey::keys_match`, a comparison of SubjectPublicKeyInfo); nothing here is
//! hand-written cryptography. Reading the variables themselves is the configuration's job: these
//! functions take paths and name the variable in every error.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};

/// apiclient_cert.pem: the merchant API certificate (PEM, leaf first).
pub const CERT_PATH_VAR: &str = "WECHAT_PAY_CERT_PATH";
/// apiclient_key.pem: its private key, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`); SEC1 EC keys are accepted too.
pub const KEY_PATH_VAR: &str = "WECHAT_PAY_KEY_PATH";
/// Optional PEM bundle of extra trusted roots for every WeChat Pay call.
pub const CA_PATH_VAR: &str = "WECHAT_PAY_CA_PATH";

#[derive(thiserror::Error, Debug)]
pub enum TlsError {
    #[error("{var}: cannot read {}: {source}", path.display())]
    Read {
        var: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{var}: {} is not valid PEM: {detail}", path.display())]
    Pem {
        var: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{var}: no certificate in {}", path.display())]
    NoCertificate { var: &'static str, path: PathBuf },
    #[error("{var}: no private key in {}", path.display())]
    NoPrivateKey { var: &'static str, path: PathBuf },
    #[error("{var}: unusable {what} in {}: {detail}", path.display())]
    Unusable {
        var: &'static str,
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error(
        "{KEY_PATH_VAR} ({}) is not the private key of the certificate in {CERT_PATH_VAR} ({})",
        key.display(),
        cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{present} is set but {missing} is not: the client certificate needs both")]
    Incomplete {
        present: &'static str,
        missing: &'static str,
    },
}

impl TlsError {
    /// The configuration variable the error is about (for start-up messages and check-config).
    pub fn variable(&self) -> &'static str {
        match self {
            TlsError::Read { var, .. }
            | TlsError::Pem { var, .. }
            | TlsError::NoCertificate { var, .. }
            | TlsError::NoPrivateKey { var, .. }
            | TlsError::Unusable { var, .. } => var,
            TlsError::Mismatch { .. } => KEY_PATH_VAR,
            TlsError::Incomplete { missing, .. } => missing,
        }
    }
}

fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        var,
        path: path.to_owned(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM file (other blocks are ignored); none is an error.
fn certificates(var: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(var, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            var,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            var,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    // The process-wide provider when one is installed (ring, see `install_crypto_provider`).
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The merchant's API client certificate and key, checked to belong together.
#[derive(Clone)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

// Hand-written so the private key never reaches a log through `{:?}`.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientIdentity {
    /// Reads `apiclient_cert.pem` and `apiclient_key.pem`. Fails, naming the variable, when a
    /// file is missing or unreadable, holds no certificate / no key, the key cannot sign, or the
    /// key is not the certificate's.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let chain = certificates(CERT_PATH_VAR, cert_path)?;
        let key_pem = read(KEY_PATH_VAR, key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                var: KEY_PATH_VAR,
                path: key_path.to_owned(),
            },
            other => TlsError::Pem {
                var: KEY_PATH_VAR,
                path: key_path.to_owned(),
                detail: other.to_string(),
            },
        })?;
        let identity = ClientIdentity {
            chain,
            key: Arc::new(key),
        };
        identity.check(cert_path, key_path)?;
        Ok(identity)
    }

    /// From DER already in memory (the simulator's generated identity, tests).
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let identity = ClientIdentity {
            chain,
            key: Arc::new(key),
        };
        identity.check(Path::new("<memory>"), Path::new("<memory>"))?;
        Ok(identity)
    }

    /// The leaf certificate.
    pub fn certificate(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }

    fn certified_key(&self, key_path: &Path) -> Result<CertifiedKey, TlsError> {
        let signing = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| TlsError::Unusable {
                var: KEY_PATH_VAR,
                path: key_path.to_owned(),
                what: "private key",
                detail: e.to_string(),
            })?;
        Ok(CertifiedKey::new(self.chain.clone(), signing))
    }

    /// rustls' own `from_der` lets an "unknown" comparison pass; here it does not: a key whose
    /// public half cannot be derived is refused rather than sent with an unverified pairing.
    fn check(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        use rustls::{Error, InconsistentKeys};
        match self.certified_key(key_path)?.keys_match() {
            Ok(()) => Ok(()),
            Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                Err(TlsError::Mismatch {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                })
            }
            Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => Err(TlsError::Unusable {
                var: KEY_PATH_VAR,
                path: key_path.to_owned(),
                what: "private key",
                detail: "its public key cannot be compared with the certificate".into(),
            }),
            Err(e) => Err(TlsError::Unusable {
                var: CERT_PATH_VAR,
                path: cert_path.to_owned(),
                what: "certificate",
                detail: e.to_string(),
            }),
        }
    }
}

/// Every certificate of `WECHAT_PAY_CA_PATH`, each checked to be a usable trust anchor.
pub fn load_extra_roots(ca_path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = certificates(CA_PATH_VAR, ca_path)?;
    let mut store = RootCertStore::empty();
    for c in &certs {
        store.add(c.clone()).map_err(|e| TlsError::Unusable {
            var: CA_PATH_VAR,
            path: ca_path.to_owned(),
            what: "CA certificate",
            detail: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// The TLS settings of every WeChat Pay call (cheap to clone).
#[derive(Clone)]
pub struct PayTls {
    plain: Arc<ClientConfig>,
    with_cert: Option<Arc<ClientConfig>>,
    extra_roots: usize,
}

impl std::fmt::Debug for PayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayTls")
            .field("client_certificate", &self.with_cert.is_some())
            .field("extra_roots", &self.extra_roots)
            .finish()
    }
}

impl PayTls {
    /// webpki roots plus `extra_roots` for both clients; the second one carries `identity`.
    pub fn new(
        extra_roots: &[CertificateDer<'static>],
        identity: Option<&ClientIdentity>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for c in extra_roots {
            roots.add(c.clone()).map_err(|e| TlsError::Unusable {
                var: CA_PATH_VAR,
                path: PathBuf::from("<memory>"),
                what: "CA certificate",
                detail: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let builder = || {
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots.clone()))
                .map_err(|e| TlsError::Unusable {
                    var: CA_PATH_VAR,
                    path: PathBuf::from("<memory>"),
                    what: "TLS settings",
                    detail: e.to_string(),
                })
        };
        let plain = finish(builder()?.with_no_client_auth());
        let with_cert = match identity {
            None => None,
            Some(id) => {
                let config = builder()?
                    .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                    .map_err(|e| TlsError::Unusable {
                        var: KEY_PATH_VAR,
                        path: PathBuf::from("<memory>"),
                        what: "client certificate",
                        detail: e.to_string(),
                    })?;
                Some(finish(config))
            }
        };
        Ok(PayTls {
            plain,
            with_cert,
            extra_roots: extra_roots.len(),
        })
    }

    /// `WECHAT_PAY_CERT_PATH` + `WECHAT_PAY_KEY_PATH` (both or neither) and `WECHAT_PAY_CA_PATH`.
    pub fn from_paths(
        cert_path: Option<&Path>,
        key_path: Option<&Path>,
        ca_path: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let identity = match (cert_path, key_path) {
            (Some(c), Some(k)) => Some(ClientIdentity::load(c, k)?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsError::Incomplete {
                    present: CERT_PATH_VAR,
                    missing: KEY_PATH_VAR,
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete {
                    present: KEY_PATH_VAR,
                    missing: CERT_PATH_VAR,
                });
            }
        };
        let roots = match ca_path {
            Some(p) => load_extra_roots(p)?,
            None => Vec::new(),
        };
        PayTls::new(&roots, identity.as_ref())
    }

    /// Whether `secapi/*` (refunds) can be called.
    pub fn has_client_cert(&self) -> bool {
        self.with_cert.is_some()
    }

    /// The thread's awc client for `pay/*` (server authentication only).
    pub(crate) fn plain_client(&self) -> awc::Client {
        cached_client(&self.plain)
    }

    /// The thread's awc client for `secapi/*`, with the merchant's certificate; None without.
    pub(crate) fn cert_client(&self) -> Option<awc::Client> {
        self.with_cert.as_ref().map(cached_client)
    }
}

/// HTTP/1.1 only: awc is built without its h2 feature.
fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

thread_local! {
    // awc::Client is !Send: one per thread and per TLS configuration, so each configuration
    // keeps its own connection pool. The Arc held here keeps the pointer key unique.
    static CLIENTS: RefCell<Vec<(Arc<ClientConfig>, awc::Client)>> = const { RefCell::new(Vec::new()) };
}

fn cached_client(config: &Arc<ClientConfig>) -> awc::Client {
    CLIENTS.with(|cell| {
        let mut clients = cell.borrow_mut();
        if let Some((_, c)) = clients.iter().find(|(k, _)| Arc::ptr_eq(k, config)) {
            return c.clone();
        }
        // Configurations nobody else holds any more (a dropped WechatClient) go.
        clients.retain(|(k, _)| Arc::strong_count(k) > 1);
        let client = awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(config.clone()))
            .disable_timeout()
            .finish();
        clients.push((config.clone(), client.clone()));
        client
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["merchant".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let c = dir.join(format!("{name}_cert.pem"));
        let k = dir.join(format!("{name}_key.pem"));
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k, key)
    }

    #[test]
    fn loads_a_matching_pkcs8_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k, _) = pair(dir.path(), "a");
        let id = ClientIdentity::load(&c, &k).expect("matching pair");
        assert!(id.certificate().is_some());
        assert!(!format!("{id:?}").contains("BEGIN"));
        let tls = PayTls::from_paths(Some(&c), Some(&k), None).expect("tls");
        assert!(tls.has_client_cert());
        assert!(
            !PayTls::from_paths(None, None, None)
                .expect("plain")
                .has_client_cert()
        );
    }

    #[test]
    fn loads_pkcs1_rsa_fixture() {
        // A self-signed RSA-2048 pair made for this test with openssl; the same key as
        // PKCS#1 ("BEGIN RSA PRIVATE KEY", as older apiclient_key.pem files) and PKCS#8.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        let cert = base.join("rsa_cert.pem");
        for key in ["rsa_key_pkcs1.pem", "rsa_key_pkcs8.pem"] {
            ClientIdentity::load(&cert, &base.join(key)).expect(key);
        }
    }

    #[test]
    fn mismatched_pair_names_the_key_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _, _) = pair(dir.path(), "a");
        let (_, k2, _) = pair(dir.path(), "b");
        let e = ClientIdentity::load(&c, &k2).expect_err("mismatch");
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert_eq!(e.variable(), KEY_PATH_VAR);
        assert!(e.to_string().contains("WECHAT_PAY_KEY_PATH"), "{e}");
        assert!(e.to_string().contains("WECHAT_PAY_CERT_PATH"), "{e}");
    }

    #[test]
    fn unreadable_and_empty_files_name_their_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k, _) = pair(dir.path(), "a");
        let missing = dir.path().join("nope.pem");
        let e = ClientIdentity::load(&missing, &k).expect_err("missing cert");
        assert_eq!(e.variable(), CERT_PATH_VAR);
        assert!(
            e.to_string()
                .starts_with("WECHAT_PAY_CERT_PATH: cannot read")
        );
        let e = ClientIdentity::load(&c, &missing).expect_err("missing key");
        assert_eq!(e.variable(), KEY_PATH_VAR);

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").expect("write");
        let e = ClientIdentity::load(&empty, &k).expect_err("no cert");
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = ClientIdentity::load(&c, &empty).expect_err("no key");
        assert!(matches!(e, TlsError::NoPrivateKey { .. }), "{e}");
        // The certificate file given as the key (and the other way round).
        let e = ClientIdentity::load(&c, &c).expect_err("cert as key");
        assert_eq!(e.variable(), KEY_PATH_VAR);
        let e = ClientIdentity::load(&k, &k).expect_err("key as cert");
        assert_eq!(e.variable(), CERT_PATH_VAR);

        let e = load_extra_roots(&empty).expect_err("no CA");
        assert_eq!(e.variable(), CA_PATH_VAR);
        let e = load_extra_roots(&missing).expect_err("missing CA");
        assert_eq!(e.variable(), CA_PATH_VAR);
        let e = PayTls::from_paths(Some(&c), None, None).expect_err("half");
        assert_eq!(e.variable(), KEY_PATH_VAR);
        let e = PayTls::from_paths(None, Some(&k), None).expect_err("half");
        assert_eq!(e.variable(), CERT_PATH_VAR);
    }

    #[test]
    fn extra_root_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _, _) = pair(dir.path(), "ca");
        assert_eq!(load_extra_roots(&c).expect("roots").len(), 1);
        let tls = PayTls::from_paths(None, None, Some(&c)).expect("tls");
        assert!(!tls.has_client_cert());
        assert!(format!("{tls:?}").contains("extra_roots: 1"));
    }
}
