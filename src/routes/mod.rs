//! Request routing for the gateway: [`canonicalize`] turns the request path
//! into the one canonical spelling that is both authorised and forwarded
//! (refusing spellings that backends could read differently), and
//! [`RouteTable`] maps a method and canonical path to the configured route,
//! distinguishing "no such path" (404) from "path exists, method not
//! allowed" (405 with a precomputed `Allow` header).
#![forbid(unsafe_code)]

pub mod canonical;
pub mod table;

pub use canonical::{canonicalize, PathError};
pub use table::{Lookup, RouteError, RouteSpec, RouteTable};
