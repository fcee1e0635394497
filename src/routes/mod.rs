//! Request routing for the gateway: [`canonicalize`] turns the request path
//! into the one canonical spelling that is both authorised and forwarded
//! (refusing spellings that backends could read differently),
//! [`route_form`] the spelling it is routed by (as upstreams would read it),
//! and [`RouteTable`] maps a method and routed path to the configured route,
//! distinguishing "no such path" (404) from "path exists, method not
//! allowed" (405 with a precomputed `Allow` header).
#![forbid(unsafe_code)]

pub mod canonical;
pub mod table;

pub use canonical::{
    canonicalize, has_segments_to_resolve, is_canonical, route_form, route_form_with, MatchRules,
    PathError,
};
pub use table::{Lookup, RouteError, RouteSpec, RouteTable};

/// `CONNECT` (a tunnel to any host and port) and `TRACE` (which echoes the
/// request back, with the identity headers the gateway set): no route
/// forwards them, whatever its `methods`.
pub fn never_forwarded(method: &http::Method) -> bool {
    *method == http::Method::CONNECT || *method == http::Method::TRACE
}
