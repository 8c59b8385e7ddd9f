//! TLS with rustls (ring provider): HTTPS on the main listener, with the certificate and key
//! re-read when they change on disk (Kubernetes rewrites mounted secrets in place) and
//! optional client certificates (mTLS); and the client side for `https://` data nodes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::metrics::Metrics;

/// How long a client gets to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are looked at for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path:?} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate (BEGIN CERTIFICATE) in {path:?}"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM) in {path:?}: {e}"))
}

/// A `[server.tls]` problem, with the key it is about.
#[derive(Debug)]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

/// One loaded certificate, key (and client CA): a rustls config ready to serve.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The leaf certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

impl ServerTls {
    pub fn load(tls: &TlsConfig) -> Result<ServerTls, TlsError> {
        let err = |key| move |message| TlsError { key, message };
        let chain = read_certs(&tls.cert_file).map_err(err("server.tls.cert_file"))?;
        let key = read_key(&tls.key_file).map_err(err("server.tls.key_file"))?;
        let not_after = not_after(&chain[0]).map_err(err("server.tls.cert_file"))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3");
        let builder = match &tls.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(file) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(file).map_err(err("server.tls.client_ca_file"))? {
                    roots.add(cert).map_err(|e| TlsError {
                        key: "server.tls.client_ca_file",
                        message: format!("unusable CA certificate in {file:?}: {e}"),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError {
                            key: "server.tls.client_ca_file",
                            message: format!("{e}"),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError {
            key: "server.tls.key_file",
            message: format!(
                "does not go with the certificate in {:?}: {e}",
                tls.cert_file
            ),
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            not_after,
        })
    }
}

fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Terminates TLS on accepted connections with the newest good certificate.
pub struct Acceptor {
    tls: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    /// A digest of the three files as last seen, good or not: each change is tried once.
    seen: Mutex<[u8; 32]>,
    metrics: Arc<Metrics>,
}

impl Acceptor {
    pub fn new(tls: &TlsConfig, metrics: Arc<Metrics>) -> Result<Arc<Acceptor>, TlsError> {
        let loaded = ServerTls::load(tls)?;
        metrics.tls_cert_expiry.set(loaded.not_after);
        Ok(Arc::new(Acceptor {
            seen: Mutex::new(files_digest(tls)),
            tls: tls.clone(),
            current: ArcSwap::new(loaded.config),
            metrics,
        }))
    }

    /// The TLS handshake, within `HANDSHAKE_TIMEOUT`.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current.load_full());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    /// Re-reads the files if they changed since last seen. A broken new pair is logged and
    /// counted, and the running certificate keeps serving.
    pub fn reload_if_changed(&self) {
        let digest = files_digest(&self.tls);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == digest {
                return;
            }
            *seen = digest;
        }
        match ServerTls::load(&self.tls) {
            Ok(loaded) => {
                self.current.store(loaded.config);
                self.metrics.tls_cert_expiry.set(loaded.not_after);
                self.metrics
                    .tls_cert_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(cert_file = %self.tls.cert_file.display(), not_after = loaded.not_after, "TLS certificate reloaded");
            }
            Err(e) => {
                self.metrics
                    .tls_cert_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(key = e.key, error = %e.message, "new TLS certificate not loaded; still serving the previous one");
            }
        }
    }

    /// Looks at the files every `WATCH_INTERVAL` for as long as the acceptor lives.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(WATCH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(acceptor) = weak.upgrade() else {
                    return;
                };
                // Reading three small files; off the async threads all the same.
                let _ = tokio::task::spawn_blocking(move || acceptor.reload_if_changed()).await;
            }
        });
    }
}

/// A digest of the TLS files' contents (missing files count as empty).
fn files_digest(tls: &TlsConfig) -> [u8; 32] {
    let mut hash = Sha256::new();
    let files = [
        Some(&tls.cert_file),
        Some(&tls.key_file),
        tls.client_ca_file.as_ref(),
    ];
    for file in files.into_iter().flatten() {
        let contents = std::fs::read(file).unwrap_or_default();
        hash.update((contents.len() as u64).to_le_bytes());
        hash.update(&contents);
    }
    hash.finalize().into()
}

// === the client side ===

/// `[server.tls]`: HTTPS on `listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Require client certificates signed by these CAs (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// What a cluster's client needs to know about its nodes' certificates.
pub struct ClientTls<'a> {
    /// Some node is `https://`: the system's roots are loaded.
    pub https: bool,
    /// `tls_ca_file`'s certificates, trusted beside the system roots.
    pub extra_roots: &'a [CertificateDer<'static>],
    /// `tls_insecure_skip_verify`.
    pub skip_verify: bool,
}

/// The rustls client config for a cluster's `https://` nodes: the system's roots plus
/// `tls_ca_file`, or no verification at all with `tls_insecure_skip_verify`. A cluster
/// without `https://` nodes never uses it and gets no roots (the OS store is not read).
pub fn client_config(cluster: ClientTls<'_>) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    // No ALPN here: hyper-rustls sets it from the HTTP versions it enables (HTTP/1.1).
    if cluster.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        if cluster.https {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
        roots.add_parsable_certificates(cluster.extra_roots.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    }
}

/// `tls_insecure_skip_verify`: any certificate, any name. Signatures are still checked, so
/// the connection is at least encrypted to whoever holds the key it presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for localhost and its key, written as PEM files.
    fn files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn config(cert_file: PathBuf, key_file: PathBuf) -> TlsConfig {
        TlsConfig {
            cert_file,
            key_file,
            client_ca_file: None,
        }
    }

    #[test]
    fn a_matching_certificate_and_key_serve_h2_and_http1() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(dir.path(), "a");
        let loaded = ServerTls::load(&config(cert, key)).unwrap();
        assert_eq!(
            loaded.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(loaded.not_after > 1_700_000_000);
    }

    #[test]
    fn each_broken_file_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(dir.path(), "a");
        let (_, other_key) = files(dir.path(), "b");
        let missing = dir.path().join("missing.crt");
        let error = ServerTls::load(&config(missing, key.clone()))
            .err()
            .unwrap();
        assert_eq!(error.key, "server.tls.cert_file");
        let error = ServerTls::load(&config(cert.clone(), other_key))
            .err()
            .unwrap();
        assert_eq!(error.key, "server.tls.key_file");
        assert!(
            error.message.contains("does not go with the certificate"),
            "{}",
            error.message
        );
        let mut with_ca = config(cert, key.clone());
        with_ca.client_ca_file = Some(key);
        let error = ServerTls::load(&with_ca).err().unwrap();
        assert_eq!(error.key, "server.tls.client_ca_file");
    }

    #[test]
    fn client_configs_offer_no_alpn_and_build_with_or_without_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = files(dir.path(), "ca");
        let roots = read_certs(&cert).unwrap();
        for (https, skip_verify) in [(false, false), (true, false), (true, true)] {
            let config = client_config(ClientTls {
                https,
                extra_roots: &roots,
                skip_verify,
            });
            assert!(config.alpn_protocols.is_empty());
        }
    }
}
