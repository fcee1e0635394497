//! scopegate: a small, strict OAuth 2.0 bearer-token gateway.
//!
//! Every request walks one pipeline (see [`server::pipeline`]): canonicalise the
//! path, match a route, authenticate the bearer token, authorize the route's
//! scopes, and only then forward to the upstream. Forwarding needs an
//! [`auth::Permit`], which only authorization can create, so an unchecked request
//! cannot reach an upstream.
//!
//! # Layout
//!
//! - [`config`]: the YAML schema (`schema`), loading with file:line:column errors
//!   (`load`), and validation into runtime types (`validate`). Nothing past this
//!   module sees raw YAML.
//! - [`routes`]: path canonicalisation (`canonical`) and the route table (`table`).
//! - [`auth`]: bearer extraction (`bearer`), JWT verification (`jwt`), issuer key
//!   sets (`jwks`) and their keys' X.509 members (`x5c`), the verified-token
//!   cache (`cache`), RFC 7662 introspection (`introspect`), RFC 8414
//!   discovery (`discovery`), and scope checks
//!   (`scope`), which mint the [`auth::Permit`] (also the one a CORS
//!   preflight gets where a route lets it through).
//! - [`proxy`]: forwarding (`forward`) over one connection pool per upstream
//!   (`pool`, on the connectors of `client`) within its `max_requests`
//!   (`places`), header hygiene (`headers`), request ids (`request_id`), and
//!   the streamed upstream response body with its idle timeout (`body`).
//! - [`admin`]: Prometheus metrics (`metrics`) and the admin listener with
//!   `/metrics`, `/healthz`, `/readyz` (`health`).
//! - [`error`]: every way a request can fail, mapped to one HTTP response.
//! - [`server`]: listeners, connection limits and timeouts (`idle`), TLS
//!   (`tls`), request-smuggling detection (`framing`), lingering close of a
//!   connection left with a body unread (`linger`), hot reload (`reload`),
//!   graceful shutdown, and the request pipeline (`pipeline`).
//! - [`issuer`]: the built-in authorization server: token endpoint and grants
//!   (`token`), client authentication (`clients`), signing keys (`keys`),
//!   metadata, JWKS, introspection and revocation (`endpoints`), CORS for
//!   browser apps (`cors`), and the state store (`store`: memory, redb file,
//!   redis).
//! - [`retire`]: what a reload replaced is dropped off the runtime's threads.
//! - [`demo`]: `scopegate demo`, a self-contained playground.
//! - [`inject`]: `scopegate inject`, adds the sidecar to Kubernetes manifests.
//! - [`cli`]: the command line; `main.rs` only calls it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod inject;
pub mod issuer;
pub mod proxy;
pub mod retire;
pub mod routes;
pub mod server;
