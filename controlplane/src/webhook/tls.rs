//! The webhook's TLS: rustls with the ring provider, and a certificate that is reloaded when its
//! files change.
//!
//! The kube-apiserver only talks to webhooks over TLS, and the certificate is rotated (by the
//! chart or cert-manager) by swapping the Secret volume's `..data` link. [`Certificates`] holds
//! the current pair in an `ArcSwap` and answers every handshake with it, so a reload is one
//! pointer swap: connections already open keep their session, new ones get the new certificate,
//! nothing is dropped. A pair that does not load (a half-written swap, a key that does not match
//! the certificate) is refused and the previous pair keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

use super::metrics::{Metrics, ReloadLabels, ReloadResult};
use herald_runtime::shutdown::Shutdown;

/// Why a certificate pair could not be loaded; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{key} does not belong to {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The ring provider, the one crypto backend herald builds with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The current certificate pair, reloadable.
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<Loaded>,
    provider: Arc<CryptoProvider>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// The bytes it was loaded from, so a change event that changed nothing is not a reload.
    source: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl Certificates {
    /// Loads the pair; the webhook does not start without one.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let loaded = read_pair(cert_file, key_file, &provider)?;
        Ok(Arc::new(Certificates {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: ArcSwap::from_pointee(loaded),
            provider,
        }))
    }

    /// The server configuration for the webhook listener: TLS 1.2 and 1.3, HTTP/1.1 (the
    /// apiserver forces `http/1.1` for webhooks), certificates from `self`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Reads the files again; swaps the pair in if they changed and load. `Ok(false)`: unchanged.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let cert = read(&self.cert_file)?;
        let key = read(&self.key_file)?;
        let current = self.current.load();
        if current.source.0 == cert && current.source.1 == key {
            return Ok(false);
        }
        let loaded = parse_pair(&self.cert_file, &self.key_file, cert, key, &self.provider)?;
        self.current.store(Arc::new(loaded));
        Ok(true)
    }

    /// Reloads on every change of the files (inotify on their directories, the kubelet's
    /// `..data` swap included) and, as a fallback for file systems without change events,
    /// once a minute. Runs until `shutdown`.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, shutdown: Shutdown) {
        let files = [self.cert_file.clone(), self.key_file.clone()];
        let (_watcher, mut changes) = match herald_runtime::watch::watch_files(&files) {
            Ok((w, rx)) => (Some(w), Some(rx)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the certificate files; checking them every minute");
                (None, None)
            }
        };
        let mut poll = tokio::time::interval(Duration::from_secs(60));
        poll.tick().await;
        loop {
            tokio::select! {
                Some(()) = recv(&mut changes) => {
                    // One Secret update is several events (files, then the `..data` link).
                    tokio::time::sleep(herald_runtime::watch::SETTLE).await;
                    if let Some(rx) = changes.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                }
                _ = poll.tick() => {}
                _ = shutdown.wait() => return,
            }
            let result = match self.reload() {
                Ok(false) => continue,
                Ok(true) => {
                    tracing::info!(cert = %self.cert_file.display(), "webhook certificate reloaded");
                    ReloadResult::Loaded
                }
                Err(e) => {
                    tracing::error!(error = %e, "the webhook certificate changed but does not load; the previous one keeps serving");
                    ReloadResult::Rejected
                }
            };
            metrics
                .cert_reloads
                .get_or_create(&ReloadLabels { result })
                .inc();
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

async fn recv(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    parse_pair(cert, key, read(cert)?, read(key)?, provider)
}

fn parse_pair(
    cert_file: &Path,
    key_file: &Path,
    cert: Vec<u8>,
    key: Vec<u8>,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert_file.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::BadKey {
        path: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
            reason: e.to_string(),
        },
        _ => TlsError::BadKey {
            path: key_file.to_owned(),
            reason: e.to_string(),
        },
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        source: (cert, key),
    })
}
