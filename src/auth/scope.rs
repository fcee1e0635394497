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

    /// A list (a `scp` array) grants what the same scopes space-separated
    /// do, empty entries none; a granted scope with a character RFC 6749 3.3
    /// does not allow makes the set malformed.
    #[test]
    fn granted_scopes_read_alike_from_a_list_or_a_string() {
        let listed = Scopes::from_list(["orders:read", "", "admin"]);
        assert_eq!(listed, Scopes::from_space_separated(" orders:read  admin"));
        assert!(listed.contains("orders:read") && listed.contains("admin"));
        assert!(!listed.contains(""));
        assert!(listed.are_tokens() && !listed.is_empty());
        for none in [Scopes::from_list([""]), Scopes::from_space_separated("  ")] {
            assert!(none.is_empty() && none.are_tokens(), "{none:?}");
        }
        for malformed in ["orders:read x\tadmin", "a\"b", "caf\u{e9}"] {
            assert!(
                !Scopes::from_space_separated(malformed).are_tokens(),
                "{malformed:?}"
            );
            assert!(
                !Scopes::from_list([malformed]).are_tokens(),
                "{malformed:?}"
            );
        }
    }

    /// The routes of a small config, by path.
    fn routes() -> crate::config::Config {
        let yaml = "\
issuers:
  - name: idp
    issuer: https://idp.example
    audiences: [api]
    jwks_uri: https://idp.example/keys
    algorithms: [ES256]
upstreams:
  app:
    url: http://127.0.0.1:3000
routes:
  - path: /public
    upstream: app
    auth: none
  - path: /orders
    upstream: app
    scopes: [orders:read]
  - path: /app
    upstream: app
    scopes: [orders:read]
    forward: { cors_preflight: true }
";
        crate::config::load_str("<test>", std::path::Path::new("."), yaml).unwrap()
    }

    fn route<'c>(config: &'c crate::config::Config, path: &str) -> &'c Route {
        config
            .routes
            .iter()
            .find_map(|(p, _, route)| (p == path).then_some(route))
            .unwrap()
    }

    fn token(scopes: &str) -> Arc<VerifiedToken> {
        Arc::new(crate::auth::build_verified(
            0,
            &serde_json::Map::new(),
            Scopes::from_space_separated(scopes),
            u64::MAX,
            0,
            std::time::Instant::now() + std::time::Duration::from_secs(60),
            &[],
        ))
    }

    /// Only a token granting the route's scopes gets a permit, which carries
    /// it; a public route's permit carries none, whatever was presented.
    #[test]
    fn a_permit_needs_the_routes_scopes() {
        let config = routes();
        let orders = route(&config, "/orders");
        assert!(matches!(
            authorize(orders, None),
            Err(GatewayError::MissingToken)
        ));
        match authorize(orders, Some(token("orders:write"))) {
            Err(GatewayError::InsufficientScope { scopes }) => assert_eq!(&*scopes, "orders:read"),
            other => panic!("{other:?}"),
        }
        let permit = authorize(orders, Some(token("admin orders:read"))).unwrap();
        assert_eq!(permit.route().name, orders.name);
        let identity = permit.identity().expect("the permit's identity");
        assert!(identity.scopes.contains("orders:read"));

        let public = route(&config, "/public");
        for presented in [None, Some(token("orders:read"))] {
            let permit = authorize(public, presented).unwrap();
            assert!(permit.identity().is_none());
            assert_eq!(permit.route().name, public.name);
        }
    }

    /// A preflight passes without a token only where the route lets the
    /// app answer preflights.
    #[test]
    fn preflights_pass_only_where_the_route_says() {
        let config = routes();
        assert!(admit_preflight(route(&config, "/orders")).is_none());
        let app = route(&config, "/app");
        let permit = admit_preflight(app).expect("a permit for the preflight");
        assert_eq!(permit.route().name, app.name);
        assert!(permit.identity().is_none());
    }
}
