//! Authorization server metadata discovery: RFC 8414, then OpenID Connect
//! Discovery, refusing metadata for another issuer (RFC 8414 3.3).

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;

use crate::config::validate::issuer_endpoint;
use crate::proxy::client::HttpsClient;

/// Largest metadata document accepted.
const MAX_METADATA_BYTES: usize = 256 * 1024;

/// The most one metadata URL may take (the caller bounds the whole attempt,
/// which tries two URLs).
const PER_URL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// The endpoints scopegate takes from metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Where the issuer publishes its keys.
    pub jwks_uri: Option<Uri>,
    /// The RFC 7662 introspection endpoint.
    pub introspection_endpoint: Option<Uri>,
    /// Why a published `jwks_uri` is unfit to call (then `jwks_uri` is
    /// `None`): an issuer that needs it must not take that for "publishes
    /// no keys".
    pub unusable_jwks_uri: Option<String>,
}

/// Why an attempt found no metadata to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// Neither metadata URL gave a metadata document: no answer, another
    /// status than 200, or a body that is no metadata object (not JSON, no
    /// string `issuer`, an endpoint that is not a string).
    #[error("{0}")]
    Unavailable(String),
    /// A document came but is not usable: it is for another issuer, or
    /// what the issuer needs from it is missing or unfit to call.
    #[error("{0}")]
    Refused(String),
}

impl DiscoveryError {
    /// Metric label (`scopegate_discovery_attempts_total{result}`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Refused(_) => "refused",
        }
    }
}

#[derive(Deserialize)]
struct RawMetadata {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    introspection_endpoint: Option<String>,
}

/// The metadata URLs to try, in order: RFC 8414 inserts the well-known path
/// between host and path; OpenID Connect appends it.
pub fn metadata_urls(issuer: &str) -> Result<Vec<Uri>, String> {
    let uri: Uri = issuer
        .parse()
        .map_err(|e| format!("issuer is not a URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err("issuer is not an absolute URL".to_owned());
    };
    let path = uri.path().trim_end_matches('/');
    let rfc8414 = format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}");
    let oidc = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    [rfc8414, oidc]
        .into_iter()
        .map(|u| u.parse::<Uri>().map_err(|e| format!("{u}: {e}")))
        .collect()
}

/// Fetches and checks the issuer's metadata. With `endpoints_need_https`,
/// a plain-http endpoint beyond this host is left out.
pub async fn discover(
    issuer: &str,
    endpoints_need_https: bool,
    client: &HttpsClient<Empty<Bytes>>,
) -> Result<Metadata, DiscoveryError> {
    let mut last_error = String::from("no metadata URL");
    // A document for another issuer, which must not be used (RFC 8414 3.3):
    // the other URL may still serve this issuer's (a host that answers the
    // RFC 8414 URL of any path with its root issuer's metadata).
    let mut refused = None;
    // Config validation keeps this from failing: with `discovery`, the
    // issuer must be an absolute http(s) URL.
    for url in metadata_urls(issuer).map_err(DiscoveryError::Unavailable)? {
        // Each URL gets its share of the attempt: one that takes the
        // connection and never answers must not keep the next from being
        // tried.
        let fetched = tokio::time::timeout(PER_URL_TIMEOUT, fetch(&url, client))
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()));
        match fetched {
            Ok(raw) => {
                if raw.issuer != issuer {
                    refused.get_or_insert(format!(
                        "metadata at {url} is for issuer `{}`, not `{issuer}`",
                        raw.issuer
                    ));
                    continue;
                }
                // An endpoint that is not fit to call is left out: what
                // needs it stays unready, the rest (or an endpoint
                // configured explicitly) goes on.
                let https = endpoints_need_https;
                let (jwks_uri, unusable_jwks_uri) =
                    match raw.jwks_uri.map(|v| issuer_endpoint(&v, https)) {
                        None => (None, None),
                        Some(Ok(uri)) => (Some(uri), None),
                        Some(Err(e)) => (None, Some(e)),
                    };
                let introspection_endpoint = raw.introspection_endpoint.and_then(|value| {
                    issuer_endpoint(&value, https)
                        .inspect_err(|e| {
                            tracing::warn!(issuer, error = %e, "metadata introspection_endpoint ignored");
                        })
                        .ok()
                });
                return Ok(Metadata {
                    jwks_uri,
                    introspection_endpoint,
                    unusable_jwks_uri,
                });
            }
            Err(e) => last_error = format!("{url}: {e}"),
        }
    }
    Err(match refused {
        Some(refused) => DiscoveryError::Refused(refused),
        None => DiscoveryError::Unavailable(last_error),
    })
}

async fn fetch(url: &Uri, client: &HttpsClient<Empty<Bytes>>) -> Result<RawMetadata, String> {
    let request = Request::get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| crate::error::with_causes(&e))?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_METADATA_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("bad metadata: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata URL that refuses the connection says so in the error,
    /// not only hyper-util's "client error (Connect)".
    #[tokio::test]
    async fn a_refused_connection_is_named_in_the_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client = crate::proxy::client::build_https_client(
            None,
            std::time::Duration::from_secs(2),
            1,
            false,
        )
        .unwrap();
        let Err(DiscoveryError::Unavailable(error)) = discover(&issuer, false, &client).await
        else {
            panic!("discovery with nothing listening did not fail as unavailable");
        };
        assert!(error.contains("client error (Connect): "), "{error}");
        assert!(error.to_lowercase().contains("refused"), "{error}");
    }

    #[test]
    fn endpoints_must_be_absolute_and_keep_https() {
        for (value, https, ok) in [
            ("https://idp.test/introspect", true, true),
            ("http://idp.test/introspect", false, true),
            ("https://idp.test/introspect", false, true),
            ("http://idp.test/introspect", true, false),
            // On this host (a sidecar) plain http is as safe as the host.
            ("http://127.0.0.1:8080/introspect", true, true),
            ("http://[::1]:8080/introspect", true, true),
            ("http://localhost/introspect", true, true),
            ("http://127.0.0.1.idp.test/introspect", true, false),
            ("/introspect", false, false),
            ("idp.test/introspect", false, false),
            ("ftp://idp.test/introspect", false, false),
            ("https://user:pw@idp.test/introspect", true, false),
            ("https://idp.test/introspect#x", true, false),
            ("", false, false),
        ] {
            assert_eq!(
                issuer_endpoint(value, https).is_ok(),
                ok,
                "{value} (https issuer: {https})"
            );
        }
    }

    #[test]
    fn well_known_urls() {
        let urls = metadata_urls("https://idp.example.com/realms/corp").unwrap();
        assert_eq!(
            urls[0].to_string(),
            "https://idp.example.com/.well-known/oauth-authorization-server/realms/corp"
        );
        assert_eq!(
            urls[1].to_string(),
            "https://idp.example.com/realms/corp/.well-known/openid-configuration"
        );
        let root = metadata_urls("https://idp.example.com").unwrap();
        assert_eq!(
            root[0].to_string(),
            "https://idp.example.com/.well-known/oauth-authorization-server"
        );
    }
}
