//! CORS for the endpoints a browser app calls itself: a single-page app on
//! another origin exchanges its code and refreshes at the token endpoint,
//! revokes at logout, and reads the key set and metadata.
//!
//! The token and revocation endpoints let only the origins of the registered
//! redirect URIs read their answers (those of every client: a preflight
//! names no client, and Keycloak's `+` web origin, which this follows, is
//! per client): an app that can be sent a code can redeem it. The key set
//! and metadata are public, so any origin may read them, and their answers,
//! cached by browsers and proxies, say so whether or not a request had an
//! `Origin`. Introspection is for resource
//! servers and the authorization endpoint for navigations: neither sends
//! CORS headers. No endpoint allows credentials (cookies): token requests
//! authenticate in their body or `Authorization` header.

use std::collections::HashSet;

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ALLOW,
    ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::config::Client;
use crate::proxy::Body;

/// Who may read an endpoint's answers from a script on another origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Any origin (public documents: the key set, the metadata).
    Public,
    /// The origins of the registered redirect URIs (token, revocation).
    RegisteredOrigins,
    /// None (introspection, authorization).
    None,
}

/// The origins allowed at the token and revocation endpoints.
#[derive(Debug, Default)]
pub struct Cors {
    origins: HashSet<String>,
}

/// How long a browser may keep a preflight's answer.
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");

impl Cors {
    /// The web origins (`https://app.example`, port when not the default)
    /// of the clients' `http` and `https` redirect URIs; a native app's
    /// redirect URI has no origin a browser would send.
    pub fn new(clients: &[Client]) -> Self {
        let origins = clients
            .iter()
            .flat_map(|c| &c.redirect_uris)
            .filter_map(|uri| url::Url::parse(uri).ok())
            .filter(|uri| matches!(uri.scheme(), "http" | "https"))
            .map(|uri| uri.origin())
            .filter(url::Origin::is_tuple)
            .map(|origin| origin.ascii_serialization())
            .collect();
        Self { origins }
    }

    /// The `Access-Control-Allow-Origin` value for a request from
    /// `origin`, if that origin may read the answer.
    fn allowed_origin(
        &self,
        exposure: Exposure,
        origin: Option<&HeaderValue>,
    ) -> Option<HeaderValue> {
        match exposure {
            Exposure::Public => Some(HeaderValue::from_static("*")),
            Exposure::RegisteredOrigins => origin
                .filter(|o| o.to_str().is_ok_and(|o| self.origins.contains(o)))
                .cloned(),
            Exposure::None => None,
        }
    }

    /// Adds the CORS headers to an answer for a request from `origin` (its
    /// `Origin` header).
    pub fn expose(
        &self,
        exposure: Exposure,
        origin: Option<&HeaderValue>,
        response: &mut Response<Body>,
    ) {
        let headers = response.headers_mut();
        if exposure == Exposure::RegisteredOrigins {
            // The answer depends on the `Origin`, sent or not.
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(allowed) = self.allowed_origin(exposure, origin) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            if exposure == Exposure::RegisteredOrigins {
                // Past the CORS-safelisted ones: a refusal's challenge, and
                // when to retry after a failure limit.
                headers.insert(
                    ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("Retry-After, WWW-Authenticate"),
                );
            }
        }
    }

    /// The answer to a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), or `None` for any other request.
    /// A preflight for a method the endpoint does not take, or from an
    /// origin it does not allow, gets the same 204 without CORS headers,
    /// which the browser takes as a refusal.
    pub fn preflight(
        &self,
        exposure: Exposure,
        methods: &[Method],
        allow: &'static str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Response<Body>> {
        if method != Method::OPTIONS || !headers.contains_key(ORIGIN) {
            return None;
        }
        let requested = headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(ALLOW, HeaderValue::from_static(allow));
        out.insert(
            VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method"),
        );
        let takes_method = methods
            .iter()
            .any(|m| m.as_str().as_bytes() == requested.as_bytes());
        if let Some(allowed) = self
            .allowed_origin(exposure, headers.get(ORIGIN))
            .filter(|_| takes_method)
        {
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            out.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(allow),
            );
            out.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type"),
            );
            out.insert(ACCESS_CONTROL_MAX_AGE, MAX_AGE);
        }
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(redirect_uris: &[&str]) -> Client {
        Client {
            client_id: "spa".into(),
            secret_hash: None,
            grants: Vec::new(),
            scopes: Vec::new(),
            audience: "api".into(),
            redirect_uris: redirect_uris.iter().map(|u| (*u).to_string()).collect(),
            name: "spa".into(),
        }
    }

    #[test]
    fn origins_come_from_web_redirect_uris_only() {
        let cors = Cors::new(&[
            client(&["https://App.Example:443/cb", "http://localhost:3000/cb"]),
            client(&["com.example.app:/cb", "https://other.example:8443/x?y"]),
        ]);
        let mut got: Vec<_> = cors.origins.iter().cloned().collect();
        got.sort();
        assert_eq!(
            got,
            [
                "http://localhost:3000",
                "https://app.example",
                "https://other.example:8443"
            ]
        );
    }
}
