//! Inbound TLS: a rustls acceptor from PEM files, offering h2 and HTTP/1.1.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

use crate::auth::cache::{digest, TokenDigest};
use crate::config::TlsFiles;

/// The certificate a TLS listener serves, and the files it comes from.
/// Shared by the configs that name the same files, and rotated in place
/// ([`Inbound::refresh`]) when they change while the config file itself is
/// refused: a broken ConfigMap must not keep a renewed certificate from
/// being served until the old one expires.
pub struct Inbound {
    files: TlsFiles,
    served: ArcSwap<Served>,
    /// The digest of the files' contents last refused by
    /// [`Inbound::refresh`]: told once, not at every poll.
    refused: Mutex<Option<TokenDigest>>,
}

/// An acceptor and a digest of the files it was built from, so that a
/// reload that leaves them as they were keeps it, and with it the TLS
/// sessions clients may resume.
struct Served {
    acceptor: TlsAcceptor,
    files: TokenDigest,
    /// The certificate's `notAfter` ([`leaf_expiry`]).
    expiry: Option<i64>,
}

/// What [`Inbound::refresh`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The files hold what is served (or what was refused last time).
    Unchanged,
    /// The files changed, and their certificate is served now.
    Rotated,
}

impl Inbound {
    /// The acceptor for new connections.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.served.load().acceptor.clone()
    }

    /// When the served certificate expires (its `notAfter`, seconds since
    /// the Unix epoch); `None` if it does not read as X.509.
    pub fn expiry(&self) -> Option<i64> {
        self.served.load().expiry
    }

    /// Serves the files' certificate when they no longer hold the one
    /// served. Blocking (reads the files). A pair that does not load (a
    /// half-written rotation, a key of another certificate) leaves the
    /// served one in place and is an error, once per content.
    pub fn refresh(&self) -> Result<Refresh, String> {
        let (cert_pem, key_pem) = read_each(&self.files);
        // A file that cannot be read is a content of its own (`None`), told
        // once as a pair that does not build is.
        let digest = crate::config::load::files_digest([
            (
                self.files.cert_file.as_path(),
                cert_pem.as_deref().ok().map(digest),
            ),
            (
                self.files.key_file.as_path(),
                key_pem.as_deref().ok().map(digest),
            ),
        ]);
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        if digest == self.served.load().files {
            // Put back as served: a refusal of the same content later is
            // news again.
            *refused = None;
            return Ok(Refresh::Unchanged);
        }
        if *refused == Some(digest) {
            return Ok(Refresh::Unchanged);
        }
        let built = both(&self.files, cert_pem, key_pem).and_then(|(cert_pem, key_pem)| {
            Ok(Served {
                acceptor: build(&self.files, &cert_pem, &key_pem)?,
                files: digest,
                expiry: leaf_expiry(&cert_pem),
            })
        });
        match built {
            Ok(served) => {
                self.served.store(Arc::new(served));
                *refused = None;
                Ok(Refresh::Rotated)
            }
            Err(e) => {
                *refused = Some(digest);
                Err(e)
            }
        }
    }
}

fn contents_digest(files: &TlsFiles, cert_pem: &[u8], key_pem: &[u8]) -> TokenDigest {
    crate::config::load::files_digest([
        (files.cert_file.as_path(), Some(digest(cert_pem))),
        (files.key_file.as_path(), Some(digest(key_pem))),
    ])
}

/// The certificate for `files`: `running`'s own when the files hold what it
/// serves, else a new one.
pub fn inbound(files: &TlsFiles, running: Option<&Arc<Inbound>>) -> Result<Arc<Inbound>, String> {
    let (cert_pem, key_pem) = read(files)?;
    let digest = contents_digest(files, &cert_pem, &key_pem);
    if let Some(running) = running.filter(|r| r.served.load().files == digest) {
        return Ok(Arc::clone(running));
    }
    Ok(Arc::new(Inbound {
        files: files.clone(),
        served: ArcSwap::from_pointee(Served {
            acceptor: build(files, &cert_pem, &key_pem)?,
            files: digest,
            expiry: leaf_expiry(&cert_pem),
        }),
        refused: Mutex::new(None),
    }))
}

fn read(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (cert_pem, key_pem) = read_each(files);
    both(files, cert_pem, key_pem)
}

/// The certificate file's contents and the key file's, each as read.
fn read_each(files: &TlsFiles) -> (std::io::Result<Vec<u8>>, std::io::Result<Vec<u8>>) {
    (
        std::fs::read(&files.cert_file),
        std::fs::read(&files.key_file),
    )
}

/// Both files' contents, or the first read error with its file's path.
fn both(
    files: &TlsFiles,
    cert_pem: std::io::Result<Vec<u8>>,
    key_pem: std::io::Result<Vec<u8>>,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert_pem = cert_pem.map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    let key_pem = key_pem.map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    Ok((cert_pem, key_pem))
}

/// When the chain's first certificate, the one clients check, expires: its
/// `notAfter` in seconds since the Unix epoch; `None` if the PEM's first
/// certificate does not read as X.509 here (the served gauge is 0 then).
fn leaf_expiry(cert_pem: &[u8]) -> Option<i64> {
    let mut cert_pem = cert_pem;
    let leaf = rustls_pemfile::certs(&mut cert_pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Builds the acceptor from the files as they are now; errors name the file
/// at fault.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let (cert_pem, key_pem) = read(files)?;
    build(files, &cert_pem, &key_pem)
}

/// Builds an acceptor from the files' contents; errors name the file at
/// fault.
pub(crate) fn build(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<TlsAcceptor, String> {
    let mut cert_pem = cert_pem;
    let mut key_pem = key_pem;
    let certs = rustls_pemfile::certs(&mut cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates", files.cert_file.display()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem)
        .map_err(|e| format!("{}: {e}", files.key_file.display()))?
        .ok_or_else(|| format!("{}: no private key", files.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // A key of a kind no signer takes (Ed448, RSA under 2048 bits) is the
    // key file's fault, not the certificate's.
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                "the private key in {} does not belong to the certificate in {}",
                files.key_file.display(),
                files.cert_file.display()
            ),
            e => format!("{}: {e}", files.cert_file.display()),
        })?;
    // HTTP/1.0 too, as nginx offers: a client offering only it (curl's
    // `--http1.0`) would otherwise be refused in the handshake.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
