//! Scope checks and the [`Permit`]: the only value that lets a request reach an
//! upstream, and only this module can create it.

use crate::auth::VerifiedToken;
use crate::config::{Access, Route};
use crate::error::GatewayError;
use std::sync::Arc;

/// The scopes a route requires.
#[derive(Debug, Clone)]
pub struct ScopeRequirement {
    all: Box<[Box<str>]>,
    any: Box<[Box<str>]>,
    /// The scopes named in an `insufficient_scope` challenge: one set that
    /// suffices (the required ones and the first alternative), since RFC
    /// 6750's `scope` lists scopes all needed and has no "one of".
    listed: Arc<str>,
}

impl ScopeRequirement {
    /// `all`: every one is required; `any`: at least one is required. Scope
    /// tokens are checked against RFC 6749 3.3 (`NQCHAR`, no spaces).
    pub fn new(all: Vec<String>, any: Vec<String>) -> Result<Self, String> {
        for scope in all.iter().chain(&any) {
            check_scope_token(scope)?;
        }
        let listed = all
            .iter()
            .chain(any.first())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Self {
            all: all.into_iter().map(String::into_boxed_str).collect(),
            any: any.into_iter().map(String::into_boxed_str).collect(),
            listed: Arc::from(listed),
        })
    }

    /// Exact, case-sensitive set membership: `read` never satisfies `read:all`.
    pub fn is_satisfied_by(&self, granted: &Scopes) -> bool {
        self.all.iter().all(|s| granted.contains(s))
            && (self.any.is_empty() || self.any.iter().any(|s| granted.contains(s)))
    }

    /// The scopes, space-separated, for `scopegate check`.
    pub fn describe(&self) -> String {
        let mut out = self.all.join(" ");
        if !self.any.is_empty() {
            if !out.is_empty() {
                out.push_str(" + ");
            }
            out.push_str("one of: ");
            out.push_str(&self.any.join(" "));
        }
        out
    }
}

/// Refuses what is not one scope token, saying what one is: the check
/// [`ScopeRequirement::new`] makes, for a config to make on each scope at
/// its own place in the file.
pub fn check_scope_token(scope: &str) -> Result<(), String> {
    if is_scope_token(scope) {
        Ok(())
    } else {
        Err(format!(
            "`{scope}` is not a valid scope token (RFC 6749 3.3: printable ASCII without space, `\"` or `\\`)"
        ))
    }
}

/// Whether `s` is one scope token (RFC 6749 3.3: printable ASCII without
/// space, `"` or `\`).
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// The scopes a token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Box<[Box<str>]>);

impl Scopes {
    /// From a space-separated `scope` string (RFC 6749 3.3).
    pub fn from_space_separated(s: &str) -> Self {
        Self(
            s.split(' ')
                .filter(|t| !t.is_empty())
                .map(Box::from)
                .collect(),
        )
    }

    /// From a list of scope tokens (`scp` arrays, whose entries the caller
    /// checked hold no space).
    pub fn from_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            items
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(Box::from)
                .collect(),
        )
    }

    /// Whether every scope is a well-formed scope token.
    pub fn are_tokens(&self) -> bool {
        self.0.iter().all(|s| is_scope_token(s))
    }

    /// Exact membership.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|s| &**s == scope)
    }

    /// Space-separated, for identity headers.
    pub fn joined(&self) -> String {
        self.0.join(" ")
    }

    /// Heap bytes held, about (each scope is its own allocation).
    pub fn heap_bytes(&self) -> usize {
        self.0.iter().map(|s| s.len() + 32).sum()
    }

    /// True when no scope is granted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Proof that a request passed its route's check. Forwarding requires one, and
/// only [`authorize`] can make one.
#[derive(Debug)]
pub struct Permit<'r> {
    route: &'r Route,
    identity: Option<Arc<VerifiedToken>>,
}

impl<'r> Permit<'r> {
    /// The route that was matched and checked.
    pub fn route(&self) -> &'r Route {
        self.route
    }

    /// The verified token, for a bearer route.
    pub fn identity(&self) -> Option<&VerifiedToken> {
        self.identity.as_deref()
    }
}

/// Lets a CORS preflight through, without a token, to a route with
/// `cors_preflight` (browsers send preflights without credentials, and the
/// app answers them). The caller has made sure the request is a preflight.
pub fn admit_preflight(route: &Route) -> Option<Permit<'_>> {
    route.forward.cors_preflight.then_some(Permit {
        route,
        identity: None,
    })
}

/// Checks a route's access rule against the authenticated identity (`None` for
/// a public route, where no token was looked at).
pub fn authorize(
    route: &Route,
    identity: Option<Arc<VerifiedToken>>,
) -> Result<Permit<'_>, GatewayError> {
    match &route.access {
        Access::Public => Ok(Permit {
            route,
            identity: None,
        }),
        Access::Bearer { scopes, .. } => {
            let Some(token) = identity else {
                return Err(GatewayError::MissingToken);
            };
            if !scopes.is_satisfied_by(&token.scopes) {
                return Err(GatewayError::InsufficientScope {
                    scopes: Arc::clone(&scopes.listed),
                });
            }
            Ok(Permit {
                route,
                identity: Some(token),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(all: &[&str], any: &[&str]) -> ScopeRequirement {
        ScopeRequirement::new(
            all.iter().map(|s| s.to_string()).collect(),
            any.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
    }

    /// `scopegate check` prints both kinds of requirement, joined only when
    /// there are both.
    #[test]
    fn describe_reads_as_written() {
        assert_eq!(req(&["a", "b"], &[]).describe(), "a b");
        assert_eq!(req(&[], &["b", "c"]).describe(), "one of: b c");
        assert_eq!(req(&["a"], &["b", "c"]).describe(), "a + one of: b c");
    }

    #[test]
    fn membership_is_exact() {
        let granted = Scopes::from_space_separated("read orders:read  Admin");
        assert!(req(&["read"], &[]).is_satisfied_by(&granted));
        assert!(req(&["orders:read", "read"], &[]).is_satisfied_by(&granted));
        assert!(!req(&["read:all"], &[]).is_satisfied_by(&granted));
        assert!(!req(&["admin"], &[]).is_satisfied_by(&granted));
        assert!(!req(&["orders"], &[]).is_satisfied_by(&granted));
        assert!(req(&[], &[]).is_satisfied_by(&Scopes::default()));
        let commas = Scopes::from_space_separated("read,write");
        assert!(!req(&["read"], &[]).is_satisfied_by(&commas));
    }

    #[test]
    fn any_of() {
        let r = req(&[], &["orders:write", "orders:admin"]);
        assert!(r.is_satisfied_by(&Scopes::from_space_separated("orders:admin")));
        assert!(!r.is_satisfied_by(&Scopes::from_space_separated("orders:read")));
        let both = req(&["a"], &["b", "c"]);
        assert!(!both.is_satisfied_by(&Scopes::from_space_separated("b")));
        assert!(both.is_satisfied_by(&Scopes::from_space_separated("a c")));
    }

    #[test]
    fn scope_tokens_are_validated() {
        assert!(ScopeRequirement::new(vec!["a b".into()], vec![]).is_err());
        assert!(ScopeRequirement::new(vec!["".into()], vec![]).is_err());
        assert!(ScopeRequirement::new(vec!["a\"b".into()], vec![]).is_err());
        assert!(ScopeRequirement::new(vec!["orders:read".into()], vec![]).is_ok());
    }
}
