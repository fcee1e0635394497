//! Every way a request can fail inside scopegate, and the one HTTP response each
//! maps to (in gRPC's form for a gRPC client). `reason()` is the bounded label
//! used in logs and metrics.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use percent_encoding::{AsciiSet, CONTROLS};

use crate::auth::jwt::TokenError;
use crate::proxy::Body;
use crate::routes::PathError;

/// The most header names an HTTP/2 request may have (hyper allows an
/// HTTP/1.1 head 100 lines; Envoy's default is 100 too): a header map past
/// about 24 000 names cannot take the forwarding headers.
pub const MAX_REQUEST_HEADERS: usize = 100;

/// The realm scopegate names in its challenges.
pub const REALM: &str = "scopegate";

/// gRPC's status trailer (sent in a trailers-only answer's headers).
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC's status message: percent-encoded outside printable ASCII, and `%`.
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_MESSAGE_ESCAPED: &AsciiSet = &CONTROLS.add(b'%');

/// A gRPC call: an HTTP/2 `POST` with `application/grpc` or one of its
/// `+format` subtypes (not gRPC-Web, whose status travels in the body). Its
/// client reads a refusal from `grpc-status`, not from the HTTP status. (A
/// `CONNECT` never is one: a 200 would open a tunnel.)
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    if request.version() != Version::HTTP_2 || request.method() != Method::POST {
        return false;
    }
    let Some(value) = request.headers().get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
}

/// A request scopegate answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The path is malformed or dangerous (encoded slash, NUL, ...).
    #[error("bad path: {0}")]
    BadPath(PathError),
    /// Missing, repeated or malformed `Host`.
    #[error("bad Host header")]
    BadHost,
    /// A method with lower-case letters (`delete`): routes name methods in
    /// upper case, and servers that upper-case it (Django, Flask) would run
    /// a handler the route did not grant.
    #[error("lower-case method")]
    BadMethod,
    /// A WebDAV `COPY` or `MOVE` whose `Destination` (RFC 4918 10.3), the
    /// second path it acts on, is missing, malformed, repeated, or one
    /// another route serves, or with paths below it or the source that are
    /// not the route's: a public route would otherwise write where another
    /// needs a token.
    #[error("Destination outside the route")]
    ForeignDestination,
    /// A WebDAV `PROPFIND` or `LOCK` deeper than `Depth: 0` on a collection
    /// with another route's paths, or paths no route serves, below it: it
    /// would list or lock members that the gateway guards or refuses.
    #[error("collection spans other routes")]
    CollectionSpansRoutes,
    /// The upstream's `base_path` and the request's target together are
    /// longer than a request target may be (65 534 bytes).
    #[error("request target too long for the upstream")]
    TargetTooLong,
    /// Ambiguous message framing (request smuggling attempt).
    #[error("ambiguous message framing")]
    AmbiguousFraming,
    /// The connection's framing could not be followed up to this request
    /// (a `Content-Length` or chunk-size line over 256 bytes, a chunked
    /// body's line ending in a bare LF), so a smuggled head could go unseen:
    /// refused rather than trusted.
    #[error("message framing not followed")]
    UnfollowableFraming,
    /// More header names than [`MAX_REQUEST_HEADERS`] (an HTTP/2 request;
    /// hyper refuses an HTTP/1.1 head of more than 100 lines itself).
    #[error("too many header fields")]
    TooManyHeaders,
    /// A transfer coding other than `chunked` alone (RFC 9112 6.1).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// A WebSocket handshake that is not a `GET` without a body (RFC 6455
    /// 4.1): an upstream that switches at once would read the body as
    /// frames, one that does not would take it as a request's.
    #[error("malformed WebSocket handshake")]
    BadWebSocketHandshake,
    /// No route has this path.
    #[error("no route for this path")]
    RouteNotFound,
    /// `CONNECT` (a tunnel to any host and port) or `TRACE` (which echoes
    /// the request, the gateway's identity headers included), which no
    /// route forwards.
    #[error("method not supported")]
    UnsupportedMethod,
    /// A route has this path but not this method.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// Precomputed `Allow` header value.
        allow: HeaderValue,
    },
    /// No `Authorization` header (RFC 6750 3.1: no error code).
    #[error("no bearer token")]
    MissingToken,
    /// An `Authorization` header of another scheme (`Basic`, ...): no bearer
    /// credentials either (RFC 6750 3.1: no error code).
    #[error("another authentication scheme")]
    OtherScheme,
    /// The `Authorization` header is not one well-formed bearer token.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The token is not valid for this gateway.
    #[error("invalid token: {0}")]
    InvalidToken(TokenError),
    /// The token is valid but lacks the route's scopes.
    #[error("insufficient scope")]
    InsufficientScope {
        /// The required scopes, space-separated, for the challenge.
        scopes: Arc<str>,
    },
    /// The issuer's keys are not available yet (startup, IdP down before first fetch).
    #[error("issuer keys unavailable")]
    KeysUnavailable,
    /// The introspection endpoint gave no usable answer (fail closed).
    #[error("introspection unavailable")]
    IntrospectionUnavailable,
    /// The authorization server's store could not answer a revocation check.
    #[error("state store unavailable")]
    StoreUnavailable,
    /// The client stopped sending its request body for longer than
    /// `body_idle_timeout`.
    #[error("request body timed out")]
    RequestBodyTimeout,
    /// The client's request body broke off (connection reset, bad chunking).
    #[error("request body broke off")]
    RequestBodyBroken,
    /// The upstream refused or dropped the connection.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream has its `max_requests` in flight.
    #[error("upstream at its request limit")]
    UpstreamOverloaded,
}

impl GatewayError {
    /// A short, bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadPath(e) => e.reason(),
            Self::BadHost => "bad_host",
            Self::BadMethod => "lower_case_method",
            Self::ForeignDestination => "foreign_destination",
            Self::CollectionSpansRoutes => "collection_spans_routes",
            Self::TargetTooLong => "target_too_long",
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::UnfollowableFraming => "unfollowable_framing",
            Self::TooManyHeaders => "too_many_headers",
            Self::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Self::BadWebSocketHandshake => "bad_websocket_handshake",
            Self::RouteNotFound => "route_not_found",
            Self::UnsupportedMethod => "unsupported_method",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::MissingToken => "missing_token",
            Self::OtherScheme => "other_scheme",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(e) => e.reason(),
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::KeysUnavailable => "keys_unavailable",
            Self::IntrospectionUnavailable => "introspection_unavailable",
            Self::StoreUnavailable => "store_unavailable",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::RequestBodyBroken => "request_body_broken",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamOverloaded => "upstream_overloaded",
        }
    }

    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadPath(_)
            | Self::BadHost
            | Self::BadMethod
            | Self::ForeignDestination
            | Self::CollectionSpansRoutes
            | Self::AmbiguousFraming
            | Self::UnfollowableFraming
            | Self::BadWebSocketHandshake
            | Self::InvalidRequest(_)
            | Self::RequestBodyBroken => StatusCode::BAD_REQUEST,
            Self::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TargetTooLong => StatusCode::URI_TOO_LONG,
            Self::UnsupportedTransferCoding | Self::UnsupportedMethod => {
                StatusCode::NOT_IMPLEMENTED
            }
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::MissingToken | Self::OtherScheme | Self::InvalidToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Self::KeysUnavailable
            | Self::IntrospectionUnavailable
            | Self::StoreUnavailable
            | Self::UpstreamOverloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The OAuth/JSON `error` code and a short description for the body.
    fn code_and_description(&self) -> (&'static str, Cow<'static, str>) {
        let (code, description): (&'static str, &'static str) = match self {
            Self::BadPath(e) => return ("invalid_request", Cow::Owned(e.to_string())),
            other => other.static_code_and_description(),
        };
        (code, Cow::Borrowed(description))
    }

    fn static_code_and_description(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadPath(_) => ("invalid_request", "the request path is not allowed"),
            Self::BadHost => ("invalid_request", "missing or malformed Host header"),
            Self::BadMethod => ("invalid_request", "the method must be upper case"),
            Self::TargetTooLong => (
                "invalid_request",
                "the request target is too long once the upstream's base path is added",
            ),
            Self::ForeignDestination => (
                "invalid_request",
                "the Destination header must name a path of the route the request matched, and the paths below both must be that route's alone",
            ),
            Self::CollectionSpansRoutes => (
                "invalid_request",
                "paths below this collection are not all this route's: send Depth: 0",
            ),
            Self::AmbiguousFraming => (
                "invalid_request",
                "the body's length is given twice (Content-Length repeated or with Transfer-Encoding)",
            ),
            Self::UnfollowableFraming => (
                "invalid_request",
                "the connection's framing could not be followed (a Content-Length or chunk-size line over 256 bytes, or a chunked body's line ending without CR)",
            ),
            Self::TooManyHeaders => (
                "request_header_fields_too_large",
                "the request has more header names than the gateway accepts (100)",
            ),
            Self::UnsupportedTransferCoding => (
                "not_implemented",
                "the only transfer coding accepted is chunked",
            ),
            Self::BadWebSocketHandshake => (
                "invalid_request",
                "a WebSocket handshake must be a GET request without a body",
            ),
            Self::UnsupportedMethod => ("not_implemented", "CONNECT and TRACE are not forwarded"),
            Self::RouteNotFound => ("not_found", "no route matches this path"),
            Self::MethodNotAllowed { .. } => {
                ("method_not_allowed", "the route does not allow this method")
            }
            // RFC 6750 3.1: no error code in the challenge; the body says why.
            Self::MissingToken => ("unauthorized", "a bearer token is required"),
            Self::OtherScheme => (
                "unauthorized",
                "a bearer token is required; other authentication schemes are not accepted",
            ),
            Self::InvalidRequest(d) => ("invalid_request", d),
            Self::InvalidToken(e) => ("invalid_token", e.description()),
            Self::InsufficientScope { .. } => (
                "insufficient_scope",
                "the token does not grant the scopes this route requires",
            ),
            Self::KeysUnavailable => (
                "temporarily_unavailable",
                "the token issuer's keys are not available yet",
            ),
            Self::IntrospectionUnavailable => (
                "temporarily_unavailable",
                "the token could not be checked with its issuer; retry later",
            ),
            Self::StoreUnavailable => (
                "temporarily_unavailable",
                "the token's revocation state could not be checked; retry later",
            ),
            Self::RequestBodyTimeout => (
                "request_timeout",
                "the request body stopped arriving for longer than the gateway waits",
            ),
            Self::RequestBodyBroken => ("invalid_request", "the request body broke off"),
            Self::UpstreamUnavailable => ("bad_gateway", "the upstream is unavailable"),
            Self::UpstreamTimeout => ("gateway_timeout", "the upstream did not answer in time"),
            Self::UpstreamOverloaded => (
                "service_unavailable",
                "the upstream has as many requests in flight as the gateway sends it; retry later",
            ),
        }
    }

    /// Renders the response: status, JSON body, and the RFC 6750 challenge where
    /// the failure is about the bearer token.
    pub fn into_response(self, challenge: &ChallengeContext) -> Response<Body> {
        let (code, description) = self.code_and_description();
        let body = serde_json::json!({ "error": code, "error_description": description });
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.add_headers(headers, code, &description, challenge);
        response
    }

    /// Makes the answer readable by a script on another origin, for a route
    /// whose app answers browsers' CORS preflights (`cors_preflight`): the
    /// browser sends the real request on the app's word, and without these a
    /// refusal here (an expired token's 401, a 403 naming the scope wanted, a
    /// 503's `Retry-After`) reaches the app's script as a bare network error.
    /// Any origin, no credentials: a cross-origin script cannot attach a
    /// user's bearer token, and the answer holds nothing of the user's.
    pub fn expose_to_browsers(headers: &mut http::HeaderMap) {
        headers.insert(
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("WWW-Authenticate, Retry-After, Allow"),
        );
    }

    /// What every form of the answer carries besides status, body and
    /// content type: `no-store`, the challenge, `Allow`, `Retry-After`, and
    /// `Connection: close` where the connection ends.
    fn add_headers(
        &self,
        headers: &mut http::HeaderMap,
        code: &str,
        description: &str,
        challenge: &ChallengeContext,
    ) {
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        match self {
            Self::MissingToken | Self::OtherScheme => {
                headers.insert(WWW_AUTHENTICATE, challenge.bare.clone());
            }
            Self::InvalidRequest(_) | Self::InvalidToken(_) => {
                let description = description_chars(description);
                let value = format!(
                    "Bearer realm=\"{REALM}\", error=\"{code}\", error_description=\"{description}\"{}",
                    challenge.suffix
                );
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Self::InsufficientScope { scopes } => {
                let description = description_chars(description);
                let value = format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{description}\", scope=\"{scopes}\"{}",
                    challenge.suffix
                );
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Self::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, allow.clone());
            }
            Self::KeysUnavailable | Self::IntrospectionUnavailable | Self::StoreUnavailable => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::UpstreamOverloaded => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if self.ends_connection() {
            crate::proxy::headers::announce_close(headers);
        }
    }

    /// The gRPC status a gRPC client gets for this refusal: gRPC's mapping
    /// of the HTTP status, except that every refused bearer token is
    /// `UNAUTHENTICATED` (a malformed one too), and a method the gateway
    /// does not serve is `UNIMPLEMENTED`.
    pub fn grpc_status(&self) -> u8 {
        const INTERNAL: u8 = 13;
        const UNAUTHENTICATED: u8 = 16;
        const PERMISSION_DENIED: u8 = 7;
        const UNIMPLEMENTED: u8 = 12;
        const UNAVAILABLE: u8 = 14;
        const UNKNOWN: u8 = 2;
        match self {
            Self::MissingToken
            | Self::OtherScheme
            | Self::InvalidRequest(_)
            | Self::InvalidToken(_) => UNAUTHENTICATED,
            Self::InsufficientScope { .. } => PERMISSION_DENIED,
            Self::RouteNotFound
            | Self::MethodNotAllowed { .. }
            | Self::UnsupportedMethod
            | Self::UnsupportedTransferCoding => UNIMPLEMENTED,
            Self::KeysUnavailable
            | Self::IntrospectionUnavailable
            | Self::StoreUnavailable
            | Self::UpstreamUnavailable
            | Self::UpstreamTimeout
            | Self::UpstreamOverloaded => UNAVAILABLE,
            Self::BadPath(_)
            | Self::BadHost
            | Self::BadMethod
            | Self::ForeignDestination
            | Self::CollectionSpansRoutes
            | Self::TargetTooLong
            | Self::AmbiguousFraming
            | Self::UnfollowableFraming
            | Self::BadWebSocketHandshake
            | Self::RequestBodyBroken => INTERNAL,
            Self::RequestBodyTimeout | Self::TooManyHeaders => UNKNOWN,
        }
    }

    /// Renders the refusal for a gRPC client: a trailers-only answer (HTTP
    /// 200, no body) with `grpc-status` and the description as
    /// `grpc-message`, keeping the challenge and the other headers
    /// [`Self::into_response`] sets.
    pub fn into_grpc_response(self, challenge: &ChallengeContext) -> Response<Body> {
        let (code, description) = self.code_and_description();
        let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(
            GRPC_STATUS.clone(),
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        let message = percent_encoding::utf8_percent_encode(&description, GRPC_MESSAGE_ESCAPED);
        if let Ok(message) = HeaderValue::from_str(&message.to_string()) {
            headers.insert(GRPC_MESSAGE.clone(), message);
        }
        self.add_headers(headers, code, &description, challenge);
        response
    }

    /// Whether the connection ends with this answer whatever the request:
    /// framing that can't be trusted (or a fragment, after which the
    /// connection watch reads no more), a body whose rest can't be skipped,
    /// or tunnel bytes a refused CONNECT's client may send at once.
    pub fn ends_connection(&self) -> bool {
        matches!(
            self,
            Self::AmbiguousFraming
                | Self::UnfollowableFraming
                | Self::BadPath(PathError::Fragment)
                | Self::UnsupportedTransferCoding
                | Self::BadWebSocketHandshake
                | Self::UnsupportedMethod
                | Self::BadHost
                | Self::RequestBodyTimeout
                | Self::RequestBodyBroken
        )
    }
}

/// What every `WWW-Authenticate` challenge carries besides the error: the
/// realm and, when configured, RFC 9728's `resource_metadata` URL.
#[derive(Debug, Clone)]
pub struct ChallengeContext {
    /// `Bearer realm="scopegate"[, resource_metadata="..."]`.
    bare: HeaderValue,
    /// `, resource_metadata="..."` or empty.
    suffix: String,
}

impl ChallengeContext {
    /// Challenges that name a protected resource metadata URL, if any.
    pub fn new(resource_metadata_url: Option<&str>) -> Self {
        let suffix = resource_metadata_url
            .map(|url| format!(", resource_metadata=\"{url}\""))
            .unwrap_or_default();
        let bare = HeaderValue::from_str(&format!("Bearer realm=\"{REALM}\"{suffix}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"scopegate\""));
        Self { bare, suffix }
    }
}

impl Default for ChallengeContext {
    fn default() -> Self {
        Self::new(None)
    }
}

/// `description` held to the characters RFC 6749 5.2 and RFC 6750 3 allow
/// in `error_description` (printable ASCII but `"` and `\`), any other
/// replaced by `?`: it goes into a quoted string, which a `"` would end.
pub(crate) fn description_chars(description: &str) -> Cow<'_, str> {
    let allowed =
        |c: char| c == ' ' || c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c);
    if description.chars().all(allowed) {
        return Cow::Borrowed(description);
    }
    Cow::Owned(
        description
            .chars()
            .map(|c| if allowed(c) { c } else { '?' })
            .collect(),
    )
}

/// An error and its causes, each after a colon, for a log line: hyper's
/// and hyper-util's errors say what failed only in their sources
/// ("client error (Connect)": "tcp connect error": "Connection refused").
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        // Some errors repeat their source's text in their own.
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {

    #[test]
    fn with_causes_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] Repeats);
        #[derive(Debug, thiserror::Error)]
        #[error("tcp connect error: {0}")]
        struct Repeats(#[source] std::io::Error);
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            with_causes(&Outer(Repeats(refused()))),
            "client error (Connect): tcp connect error: refused"
        );
        assert_eq!(with_causes(&refused()), "refused");
    }

    use super::*;

    fn request(version: Version, content_type: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.version_mut() = version;
        if let Some(value) = content_type {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        }
        request
    }

    #[test]
    fn grpc_calls_are_told_by_version_and_content_type() {
        for (version, content_type, grpc) in [
            (Version::HTTP_2, Some("application/grpc"), true),
            (Version::HTTP_2, Some("application/grpc+proto"), true),
            (
                Version::HTTP_2,
                Some("Application/GRPC;charset=utf-8"),
                true,
            ),
            (Version::HTTP_2, Some("application/grpc-web"), false),
            (Version::HTTP_2, Some("application/grpc-web+proto"), false),
            (Version::HTTP_2, Some("application/grpcx"), false),
            (Version::HTTP_2, Some("application/json"), false),
            (Version::HTTP_2, None, false),
            (Version::HTTP_11, Some("application/grpc"), false),
        ] {
            assert_eq!(
                is_grpc(&request(version, content_type)),
                grpc,
                "{version:?} {content_type:?}"
            );
        }
        for method in [Method::GET, Method::CONNECT] {
            let mut call = request(Version::HTTP_2, Some("application/grpc"));
            *call.method_mut() = method;
            assert!(!is_grpc(&call));
        }
    }

    #[test]
    fn a_grpc_refusal_is_trailers_only_with_an_escaped_message() {
        let response = GatewayError::InvalidRequest("50% of \"é\"\t")
            .into_grpc_response(&ChallengeContext::default());
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "16");
        assert_eq!(headers["grpc-message"], "50%25 of \"%C3%A9\"%09");
        // The challenge's description is a quoted string a `"` would end.
        assert_eq!(
            headers[WWW_AUTHENTICATE],
            "Bearer realm=\"scopegate\", error=\"invalid_request\", error_description=\"50% of ????\""
        );
        assert!(http_body::Body::is_end_stream(response.body()));
    }
}
