//! The route table: (method, canonical path) → route payload.
//!
//! Patterns use matchit syntax (`/orders/{id}`, `/files/{*rest}`) and match
//! whole segments, exactly and case-sensitively. Several routes may share a
//! pattern with disjoint method sets, and patterns may overlap (`/users/me`
//! and `/users/{id}`, `/orders/{id}` and `/orders/{*rest}`): a request goes
//! to the most specific pattern that matches its path *and* allows its
//! method, and `405` lists the methods of every pattern matching the path.
//!
//! # How it works
//!
//! At build time the set of patterns is closed under intersection (the
//! intersection of `/a/{x}/c` and `/a/b/{y}` is `/a/b/c`). For any path, the
//! most specific matching pattern of that closure is the intersection of all
//! declared patterns matching the path, so the answer for every method (and
//! the `Allow` header) can be precomputed per closure pattern.
//!
//! The closure patterns are spread over a few matchit routers ("layers") so
//! that within a layer no two patterns overlap and no tree node has both a
//! literal and a wildcard child. That sidesteps matchit's param/catch-all
//! conflicts and means matchit never has to backtrack, which is also where
//! it would otherwise allocate. matchit also allocates for a match with more
//! than three parameters, so the rare patterns with four or more wildcards
//! are served by a small segment trie instead. A lookup asks every layer
//! (typically one or two) and that trie, and keeps the most specific hit: no
//! scan over routes, no allocation.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use http::{HeaderValue, Method};

use super::canonical::{
    canonicalize, fold, has_case_folding_into_ascii, route_form, route_form_with, MatchRules,
    PathError,
};

/// One declared route: a path pattern, the methods it accepts and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec<T> {
    /// matchit-style pattern, e.g. `/orders/{id}` or `/files/{*rest}`; must
    /// be a canonical path (see [`canonicalize`]).
    pub path: String,
    /// Accepted methods; `None` accepts any method (and then the pattern may
    /// not be shared with another route).
    pub methods: Option<Vec<Method>>,
    /// Payload returned by [`RouteTable::lookup`] (e.g. the route's scopes).
    pub value: T,
}

/// Why [`RouteTable::build`] rejected the route list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {index}: {message}")]
pub struct RouteError {
    /// Position of the offending spec in the list given to `build`, so the
    /// config loader can point at the right entry.
    pub index: usize,
    /// Human-readable explanation.
    pub message: String,
}

/// Result of [`RouteTable::lookup`].
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a, T> {
    /// A route matches the path and accepts the method.
    Matched(&'a T),
    /// Routes match the path but none accepts the method; `allow` is the
    /// ready-made `Allow` header value (e.g. `DELETE, POST, PUT`).
    MethodNotAllowed {
        /// Sorted, comma-separated methods of every route matching the path.
        allow: &'a HeaderValue,
    },
    /// No route matches the path.
    NotFound,
}

impl<T> Clone for Lookup<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Lookup<'_, T> {}

/// Immutable routing table built once from the config and shared by all
/// requests; see the module docs for the matching rules.
pub struct RouteTable<T> {
    /// Declared routes, in declaration order.
    routes: Vec<RouteSpec<T>>,
    /// Precomputed answers, one per closure pattern, most specific first.
    nodes: Vec<Node>,
    /// matchit routers mapping a path to an index into `nodes`.
    layers: Vec<matchit::Router<usize>>,
    /// Patterns with too many wildcards for matchit to match without
    /// allocating, mapping to an index into `nodes`.
    wide: Trie,
    /// How request paths are folded before lookup ([`RouteTable::routed`]).
    rules: MatchRules,
    /// The closure patterns, for [`RouteTable::serves_alone_below`].
    closure: Vec<Pattern>,
    /// The same, mapping to their index there.
    closure_trie: Trie,
}

/// Precomputed answer for the paths whose most specific closure pattern is
/// this one.
struct Node {
    /// Method → index into `routes`, for every method some matching route
    /// lists explicitly.
    methods: Box<[(Method, usize)]>,
    /// Route taking every other method, if a matching route accepts any.
    any: Option<usize>,
    /// `Allow` header for the 405 answer (empty when `any` is set).
    allow: HeaderValue,
}

impl<T: fmt::Debug> fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.routes)
            .field("patterns", &self.nodes.len())
            .field("layers", &self.layers.len())
            .field("wide", &!self.wide.is_empty())
            .finish()
    }
}

impl<T> RouteTable<T> {
    /// Builds the table; rejects bad patterns and conflicts.
    ///
    /// A pattern is rejected if it is not canonical, has a parameter that
    /// does not span a whole segment, or a catch-all that is not last. Two
    /// routes conflict when their patterns match the same paths (parameter
    /// names do not matter) and their method sets overlap, `None` overlapping
    /// everything. The error's `index` is the later route's.
    pub fn build(specs: Vec<RouteSpec<T>>) -> Result<Self, RouteError> {
        Self::build_with(specs, MatchRules::default())
    }

    /// [`RouteTable::build`] for requests routed under `rules`; a pattern
    /// that those rules would fold (`/Admin` when case is ignored) could
    /// never match and is rejected.
    pub fn build_with(specs: Vec<RouteSpec<T>>, rules: MatchRules) -> Result<Self, RouteError> {
        let groups = group_routes(&specs, rules)?;
        let closure = Closure::compute(&groups)?;

        // Most specific first, so that a node's index is its priority.
        let mut order: Vec<usize> = (0..closure.patterns.len()).collect();
        order.sort_by(|&a, &b| by_specificity(&closure.patterns, a, b));
        let mut rank = vec![0; order.len()];
        for (r, &id) in order.iter().enumerate() {
            if let Some(slot) = rank.get_mut(id) {
                *slot = r;
            }
        }

        let mut allow_cache: HashMap<String, HeaderValue> = HashMap::new();
        let mut nodes = Vec::with_capacity(order.len());
        let mut layers = Layers::default();
        let mut wide = Trie::default();
        let mut members = Vec::new();
        for (r, &id) in order.iter().enumerate() {
            let (Some(pattern), Some(&blame)) = (closure.patterns.get(id), closure.blame.get(id))
            else {
                continue;
            };
            // Declared patterns that contain this one, most specific first.
            members.clear();
            closure.trie.overlapping(pattern, &mut members);
            members.retain(|&g| {
                closure
                    .patterns
                    .get(g)
                    .is_some_and(|p| g < groups.len() && contains(p, pattern))
            });
            members.sort_by_key(|&g| rank.get(g).copied().unwrap_or(usize::MAX));
            let node =
                make_node(&specs, &groups, &members, &mut allow_cache).map_err(|message| {
                    RouteError {
                        index: blame,
                        message,
                    }
                })?;
            nodes.push(node);
            let wildcards = pattern.iter().filter(|s| class(s) != 0).count();
            if wildcards > MATCHIT_INLINE_PARAMS {
                wide.insert(pattern, r);
            } else {
                layers.insert(pattern, r).map_err(|message| RouteError {
                    index: blame,
                    message,
                })?;
            }
        }

        Ok(RouteTable {
            closure: closure.patterns,
            closure_trie: closure.trie,
            routes: specs,
            nodes,
            layers: layers.routers,
            wide,
            rules,
        })
    }

    /// Finds the route for a canonical path as every server would read it.
    /// Tomcat drops `;` parameters and Go decodes `%3A`, while Express
    /// keeps both and find-my-way (Fastify) ends the path at its first `;`:
    /// when the path has either, these readings must lead to the same route
    /// (or all to none), or the path is refused, since the upstream may be
    /// of any kind. Allocates only for such paths.
    pub fn route(&self, method: &Method, canonical_path: &str) -> Result<Lookup<'_, T>, PathError> {
        // Where case is ignored, a server folding it by Unicode would take
        // such a character for ASCII letters, which no pattern (ASCII only
        // then) can be held to.
        if self.rules.case_insensitive && has_case_folding_into_ascii(canonical_path) {
            return Err(PathError::AmbiguousRoute);
        }
        let decoded = route_form(canonical_path);
        if matches!(decoded, std::borrow::Cow::Borrowed(_)) {
            return Ok(self.lookup(method, &fold(decoded, self.rules)));
        }
        // A segment of parameters only (`/api/;v/x`) is no segment at all
        // where they are dropped, but one a parameter matches where they
        // are kept: the readings would not even count the same segments.
        if canonical_path.contains("/;") {
            return Err(PathError::AmbiguousRoute);
        }
        let routed = self.lookup(method, &fold(decoded, self.rules));
        let received = self.lookup(
            method,
            &fold(std::borrow::Cow::Borrowed(canonical_path), self.rules),
        );
        let mut agree = same_route(&routed, &received);
        if let Some((cut, _)) = canonical_path.split_once(';') {
            // What is left of the path is the query to such a router.
            let cut = if cut.is_empty() { "/" } else { cut };
            agree &= same_route(
                &routed,
                &self.lookup(method, &route_form_with(cut, self.rules)),
            );
        }
        if agree {
            Ok(routed)
        } else {
            Err(PathError::AmbiguousRoute)
        }
    }

    /// Whether every path strictly below a canonical path (`{path}/...`)
    /// is `route`'s for `method`, as `path` reads both ways
    /// [`RouteTable::route`] compares: a WebDAV `COPY` or `MOVE` of a
    /// collection takes its members along, and another route's paths among
    /// them would be copied or moved past that route's check. Paths no
    /// route serves count as another's: the gateway refuses them, so a
    /// listing or a copy of them must not pass either.
    ///
    /// Each closure pattern meeting the paths below gives a shape (their
    /// intersection; closed under intersection, as the closure is), and so
    /// do the paths below themselves (those no pattern spells). A path
    /// below routes as its most specific shape does with each `{name}` and
    /// `{*rest}` segment spelt as no pattern spells one (`%00`, which no
    /// canonical pattern holds): those are looked up, a `{*rest}` at every
    /// depth up to two past the longest pattern meeting the paths below
    /// (deeper, every path routes alike), with and without a trailing
    /// slash. Allocates: for those methods only.
    ///
    /// Fails closed past [`MAX_LOOKUPS_BELOW`] lookups or
    /// [`MAX_WITNESS_BYTES_BELOW`] bytes looked up: with thousands of
    /// routes below a path the answer would cost milliseconds of CPU, and
    /// the request may come without a token.
    pub fn serves_alone_below(&self, method: &Method, canonical_path: &str, route: &T) -> bool {
        let routed = route_form_with(canonical_path, self.rules);
        let received = fold(std::borrow::Cow::Borrowed(canonical_path), self.rules);
        let mut budget = MAX_LOOKUPS_BELOW;
        let mut witness_bytes = MAX_WITNESS_BYTES_BELOW;
        [routed, received].iter().all(|reading| {
            let inner = reading.strip_prefix('/').unwrap_or(reading);
            let inner = inner.strip_suffix('/').unwrap_or(inner);
            if inner.bytes().filter(|&b| b == b'/').count() >= MAX_PATTERN_SEGMENTS {
                // Deeper than any pattern: every path below meets the same
                // catch-alls, all ending above it, and routes as one does.
                return [false, true].into_iter().all(|slash| {
                    let witness = spelt(&[Seg::Static(inner.to_owned()), Seg::CatchAll], 1, slash);
                    matches!(self.lookup(method, &witness), Lookup::Matched(found) if std::ptr::eq(found, route))
                });
            }
            let mut below: Pattern = inner
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| Seg::Static(s.to_owned()))
                .collect();
            below.push(Seg::CatchAll);
            let mut overlapping = Vec::new();
            self.closure_trie.overlapping(&below, &mut overlapping);
            // Each meeting pattern costs a lookup at least: no shapes built
            // for more than the bound.
            if overlapping.len() > budget {
                return false;
            }
            let meeting = || overlapping.iter().filter_map(|&id| self.closure.get(id));
            // A path below with more segments than the longest pattern
            // meeting them routes as one a segment longer does: deeper
            // spellings of a `{*rest}` would be the same lookups again, and
            // the path's own depth (the client's choice) must not set
            // their number.
            let longest = meeting().map(Vec::len).max().unwrap_or(0);
            let mut shapes: Vec<Pattern> = meeting()
                .filter_map(|pattern| intersect(pattern, &below))
                .collect();
            shapes.push(below);
            // A catch-all pattern shorter than the path meets it as the
            // paths below themselves: one shape for all of them.
            shapes.sort_unstable();
            shapes.dedup();
            shapes.iter().all(|shape| {
                let open = matches!(shape.last(), Some(Seg::CatchAll));
                let spellings = if open {
                    (longest + 3).saturating_sub(shape.len()).max(1) * 2
                } else {
                    1
                };
                (0..spellings).all(|n| {
                    let witness = spelt(shape, n / 2 + 1, n % 2 == 1);
                    let (Some(left), Some(bytes_left)) = (
                        budget.checked_sub(1),
                        witness_bytes.checked_sub(witness.len()),
                    ) else {
                        return false;
                    };
                    budget = left;
                    witness_bytes = bytes_left;
                    matches!(self.lookup(method, &witness), Lookup::Matched(found) if std::ptr::eq(found, route))
                })
            })
        })
    }

    /// Finds the route for a path as given: the output of [`canonicalize`]
    /// folded as [`RouteTable::route`] does. Does not allocate.
    pub fn lookup(&self, method: &Method, canonical_path: &str) -> Lookup<'_, T> {
        let Some(node) = self.node(canonical_path) else {
            return Lookup::NotFound;
        };
        let route = node
            .methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|&(_, r)| r)
            .or(node.any);
        match route.and_then(|r| self.routes.get(r)) {
            Some(spec) => Lookup::Matched(&spec.value),
            None => Lookup::MethodNotAllowed { allow: &node.allow },
        }
    }

    /// The `Allow` value for a path a route matches, as a 405 gives it: the
    /// methods of every route matching it (`None` when one of them accepts
    /// any method, or none matches). For an answer the gateway gives about
    /// a routed path itself (an `OPTIONS` with `Max-Forwards: 0`); the path
    /// is read as [`RouteTable::route`] routes it.
    pub fn allow(&self, canonical_path: &str) -> Option<&HeaderValue> {
        let node = self.node(&fold(route_form(canonical_path), self.rules))?;
        node.any.is_none().then_some(&node.allow)
    }

    /// The most specific closure pattern's answers for a folded path.
    fn node(&self, canonical_path: &str) -> Option<&Node> {
        let mut best: Option<usize> = None;
        for layer in &self.layers {
            if let Ok(hit) = layer.at(canonical_path) {
                let node = *hit.value;
                if best.is_none_or(|b| node < b) {
                    best = Some(node);
                }
            }
        }
        if !self.wide.is_empty() {
            if let Some(node) = self.wide.find(canonical_path) {
                if best.is_none_or(|b| node < b) {
                    best = Some(node);
                }
            }
        }
        best.and_then(|n| self.nodes.get(n))
    }

    /// Number of declared routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route was declared (every lookup is `NotFound`).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// (path pattern, methods or None for any, &T) in declaration order, for `scopegate check` to print.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[Method]>, &T)> {
        self.routes
            .iter()
            .map(|r| (r.path.as_str(), r.methods.as_deref(), &r.value))
    }
}

// ---------------------------------------------------------------------------
// Patterns

/// One segment of a parsed pattern. Parameter names are dropped: two
/// patterns differing only in names match the same paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Seg {
    /// Literal segment text (`""` only as the last segment: trailing slash).
    Static(String),
    /// `{name}`: any non-empty segment.
    Param,
    /// `{*name}` (last only): one or more remaining characters.
    CatchAll,
}

type Pattern = Vec<Seg>;

/// Specificity class of a segment: literal beats parameter beats catch-all.
fn class(seg: &Seg) -> u8 {
    match seg {
        Seg::Static(_) => 0,
        Seg::Param => 1,
        Seg::CatchAll => 2,
    }
}

/// Orders pattern ids most specific first (matchit's priority: at the first
/// difference a literal wins over a parameter, which wins over a catch-all).
/// Two different patterns matching the same path never compare equal.
fn by_specificity(patterns: &[Pattern], a: usize, b: usize) -> Ordering {
    match (patterns.get(a), patterns.get(b)) {
        (Some(pa), Some(pb)) => pa
            .iter()
            .map(class)
            .cmp(pb.iter().map(class))
            .then_with(|| pa.cmp(pb)),
        _ => a.cmp(&b),
    }
}

/// A pattern as requests for it are routed ([`route_form_with`]): its
/// literal segments folded by `rules`, its parameters as written.
fn routed_pattern(path: &str, rules: MatchRules) -> String {
    let literal_rules = MatchRules {
        ignore_trailing_slash: false,
        ..rules
    };
    let mut out = String::with_capacity(path.len());
    for segment in path.get(1..).unwrap_or_default().split('/') {
        out.push('/');
        if segment.starts_with('{') && !segment.starts_with("{{") {
            out.push_str(segment);
        } else {
            let one = format!("/{segment}");
            let folded = route_form_with(&one, literal_rules);
            out.push_str(folded.get(1..).unwrap_or_default());
        }
    }
    if rules.ignore_trailing_slash && out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

/// Whether `path` has a `%XX` escape of a non-ASCII byte.
fn has_non_ascii_escape(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w.first() == Some(&b'%')
            && w.get(1)
                .is_some_and(|h| matches!(h, b'8'..=b'9' | b'A'..=b'F' | b'a'..=b'f'))
    })
}

/// The most segments a route pattern may have. The route trie is walked
/// recursively, a level per segment, per request too: a pattern of many
/// thousand segments would overflow a thread's stack.
pub const MAX_PATTERN_SEGMENTS: usize = 128;

/// Parses and validates a route pattern.
fn parse_pattern(path: &str, rules: MatchRules) -> Result<Pattern, String> {
    if !path.starts_with('/') {
        return Err(format!("path pattern `{path}` must start with '/'"));
    }
    match canonicalize(path) {
        Err(e) => return Err(format!("path pattern `{path}` is not a valid path: {e}")),
        Ok(c) if c != path => {
            return Err(format!(
                "path pattern `{path}` is not canonical (it would match requests for `{c}`)"
            ))
        }
        Ok(_) => {}
    }
    if rules.case_insensitive && has_non_ascii_escape(path) {
        return Err(format!(
            "path pattern `{path}` has non-ASCII characters, which case-insensitive matching cannot fold as every server does"
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|c| matches!(c, ' ' | '<' | '>' | '`' | '?'))
    {
        return Err(format!(
            "path pattern `{path}` holds a raw `{c}`, which no request path can (write %{:02X})",
            u32::from(c)
        ));
    }
    if path.contains("%3B") {
        return Err(format!(
            "path pattern `{path}` has an escaped `;` (%3B), which a server that decodes before routing (Go) reads as the raw `;` that others take for parameters: no request spelling routes the same everywhere"
        ));
    }
    if path.contains("%7B") || path.contains("%7D") {
        return Err(format!(
            "path pattern `{path}`: write a literal brace as `{{{{` or `}}}}`, not as %7B or %7D"
        ));
    }
    let routed = routed_pattern(path, rules);
    if routed != path {
        return Err(format!(
            "path pattern `{path}` can never match: requests are routed as `{routed}` (`;` parameters dropped, escapes like `%3A` decoded{}{})",
            if rules.case_insensitive { ", letters lower-cased" } else { "" },
            if rules.ignore_trailing_slash { ", a trailing slash dropped" } else { "" },
        ));
    }
    let raw: Vec<&str> = path.get(1..).unwrap_or_default().split('/').collect();
    let count = raw.len();
    if count > MAX_PATTERN_SEGMENTS {
        return Err(format!(
            "a path pattern of {count} segments: at most {MAX_PATTERN_SEGMENTS} are allowed"
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, seg)| {
            parse_segment(seg, i + 1 == count)
                .map_err(|why| format!("path pattern `{path}`, segment `{seg}`: {why}"))
        })
        .collect()
}

fn parse_segment(seg: &str, last: bool) -> Result<Seg, &'static str> {
    const WHOLE: &str =
        "a parameter must span a whole segment (write `{{` and `}}` for literal braces)";
    if seg.starts_with('{') && !seg.starts_with("{{") {
        let name = seg
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .filter(|name| !name.contains(['{', '}']))
            .ok_or(WHOLE)?;
        return match name.strip_prefix('*') {
            Some("") => Err("a catch-all parameter needs a name, e.g. `{*rest}`"),
            Some(_) if !last => Err("a catch-all parameter must be the last segment"),
            Some(rest) if rest.contains('*') => Err("`*` is not allowed in a parameter name"),
            Some(_) => Ok(Seg::CatchAll),
            None if name.is_empty() => Err("a parameter needs a name, e.g. `{id}`"),
            None => Ok(Seg::Param),
        };
    }
    let mut literal = String::with_capacity(seg.len());
    let mut chars = seg.chars().peekable();
    while let Some(c) = chars.next() {
        // `{{` and `}}` stand for one literal brace.
        if (c == '{' || c == '}') && chars.next_if_eq(&c).is_none() {
            return Err(WHOLE);
        }
        literal.push(c);
    }
    Ok(Seg::Static(literal))
}

/// The matchit route for a parsed pattern (names normalised by position).
fn matchit_route(pattern: &[Seg]) -> String {
    let mut route = String::new();
    for (i, seg) in pattern.iter().enumerate() {
        route.push('/');
        match seg {
            Seg::Static(literal) => {
                for c in literal.chars() {
                    if c == '{' || c == '}' {
                        route.push(c);
                    }
                    route.push(c);
                }
            }
            Seg::Param => route.push_str(&format!("{{p{i}}}")),
            Seg::CatchAll => route.push_str("{*rest}"),
        }
    }
    route
}

/// The pattern matching exactly the paths matched by both `a` and `b`, or
/// `None` if no path matches both.
fn intersect(a: &[Seg], b: &[Seg]) -> Option<Pattern> {
    /// `rest` as matched by a catch-all: it must match a non-empty remainder.
    fn under_catch_all(rest: &[Seg]) -> Option<&[Seg]> {
        match rest {
            [] => None,
            [Seg::Static(s)] if s.is_empty() => None,
            _ => Some(rest),
        }
    }
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let mut i = 0;
    loop {
        let (sa, sb) = (a.get(i), b.get(i));
        let seg = match (sa, sb) {
            (None, None) => return Some(out),
            (Some(Seg::CatchAll), Some(Seg::CatchAll)) => Seg::CatchAll,
            (Some(Seg::CatchAll), Some(_)) => {
                out.extend_from_slice(under_catch_all(b.get(i..)?)?);
                return Some(out);
            }
            (Some(_), Some(Seg::CatchAll)) => {
                out.extend_from_slice(under_catch_all(a.get(i..)?)?);
                return Some(out);
            }
            (Some(Seg::Static(x)), Some(Seg::Static(y))) if x == y => Seg::Static(x.clone()),
            (Some(Seg::Static(s)), Some(Seg::Param)) | (Some(Seg::Param), Some(Seg::Static(s)))
                if !s.is_empty() =>
            {
                Seg::Static(s.clone())
            }
            (Some(Seg::Param), Some(Seg::Param)) => Seg::Param,
            _ => return None,
        };
        out.push(seg);
        i += 1;
    }
}

/// Whether every path matched by `inner` is matched by `outer`.
fn contains(outer: &[Seg], inner: &[Seg]) -> bool {
    intersect(outer, inner).is_some_and(|i| i == inner)
}

// ---------------------------------------------------------------------------
// Declared routes grouped by pattern

/// Declared routes sharing one pattern (with disjoint method sets).
struct Group {
    pattern: Pattern,
    /// Indices into the specs, in declaration order.
    routes: Vec<usize>,
}

fn group_routes<T>(specs: &[RouteSpec<T>], rules: MatchRules) -> Result<Vec<Group>, RouteError> {
    let mut groups: Vec<Group> = Vec::new();
    let mut by_pattern: HashMap<Pattern, usize> = HashMap::new();
    for (index, spec) in specs.iter().enumerate() {
        let err = |message: String| RouteError { index, message };
        let pattern = parse_pattern(&spec.path, rules).map_err(err)?;
        if spec.methods.as_ref().is_some_and(Vec::is_empty) {
            return Err(err(
                "empty method list (omit `methods` to accept any method)".to_string(),
            ));
        }
        let Some(&g) = by_pattern.get(&pattern) else {
            by_pattern.insert(pattern.clone(), groups.len());
            groups.push(Group {
                pattern,
                routes: vec![index],
            });
            continue;
        };
        let Some(group) = groups.get_mut(g) else {
            continue;
        };
        for &earlier in &group.routes {
            let Some(other) = specs.get(earlier) else {
                continue;
            };
            let clash = match (&spec.methods, &other.methods) {
                (None, _) | (_, None) => Some("any method".to_string()),
                (Some(mine), Some(theirs)) => {
                    let mut common: Vec<&str> = mine
                        .iter()
                        .filter(|m| theirs.contains(m))
                        .map(Method::as_str)
                        .collect();
                    common.sort_unstable();
                    common.dedup();
                    (!common.is_empty()).then(|| common.join(", "))
                }
            };
            if let Some(clash) = clash {
                // Counted from 1, as a person counts the entries under `routes`.
                return Err(err(format!(
                    "path `{}` with {clash} is already routed by route #{} of `routes` \
                     (`{}`); routes sharing a path need disjoint methods",
                    spec.path,
                    earlier.saturating_add(1),
                    other.path
                )));
            }
        }
        group.routes.push(index);
    }
    Ok(groups)
}

/// Computes the answer for paths whose most specific closure pattern is
/// contained in exactly the groups `members` (most specific first).
fn make_node<T>(
    specs: &[RouteSpec<T>],
    groups: &[Group],
    members: &[usize],
    allow_cache: &mut HashMap<String, HeaderValue>,
) -> Result<Node, String> {
    let member_routes = || {
        members
            .iter()
            .filter_map(|&g| groups.get(g))
            .flat_map(|group| group.routes.iter())
            .filter_map(|&r| specs.get(r).map(|spec| (r, spec)))
    };
    let any = member_routes().find_map(|(r, spec)| spec.methods.is_none().then_some(r));
    let mut listed: Vec<&Method> = member_routes()
        .filter_map(|(_, spec)| spec.methods.as_ref())
        .flatten()
        .collect();
    // HEAD is GET without the body (RFC 9110 9.3.2), and servers answer it
    // with their GET handler: it goes to the most specific pattern with a
    // route for HEAD, for GET or for any method (in that order within one
    // pattern), never past a GET route to a broader one.
    if listed.contains(&&Method::GET) && !listed.contains(&&Method::HEAD) {
        listed.push(&Method::HEAD);
    }
    listed.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    listed.dedup();
    let head_route = members
        .iter()
        .filter_map(|&g| groups.get(g))
        .find_map(|group| {
            let route_with = |wanted: Option<&Method>| {
                group.routes.iter().copied().find(|&r| {
                    specs
                        .get(r)
                        .is_some_and(|spec| match (wanted, &spec.methods) {
                            (Some(m), Some(ms)) => ms.contains(m),
                            (None, None) => true,
                            _ => false,
                        })
                })
            };
            route_with(Some(&Method::HEAD))
                .or_else(|| route_with(Some(&Method::GET)))
                .or_else(|| route_with(None))
        });
    let accepts =
        |spec: &RouteSpec<T>, m: &Method| spec.methods.as_ref().is_none_or(|ms| ms.contains(m));
    let methods = listed
        .iter()
        .filter_map(|&m| {
            let route = if *m == Method::HEAD {
                head_route
            } else {
                member_routes()
                    .find(|(_, spec)| accepts(spec, m))
                    .map(|(r, _)| r)
            };
            route.map(|r| (m.clone(), r))
        })
        .collect();

    let allow_text = if any.is_some() {
        String::new()
    } else {
        listed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let allow = match allow_cache.get(&allow_text) {
        Some(v) => v.clone(),
        None => {
            let v = HeaderValue::from_str(&allow_text)
                .map_err(|e| format!("cannot build Allow header `{allow_text}`: {e}"))?;
            allow_cache.insert(allow_text, v.clone());
            v
        }
    };
    Ok(Node {
        methods,
        any,
        allow,
    })
}

// ---------------------------------------------------------------------------
// Closure under intersection

/// Above this many derived patterns per declared pattern (plus a constant),
/// the build gives up rather than use unbounded memory.
const CLOSURE_FACTOR: usize = 8;
const CLOSURE_SLACK: usize = 4096;

struct Closure {
    /// Declared patterns first (ids = group ids), then derived ones.
    patterns: Vec<Pattern>,
    /// For each pattern, the spec index to report errors against.
    blame: Vec<usize>,
    /// All patterns, for overlap queries.
    trie: Trie,
}

impl Closure {
    fn compute(groups: &[Group]) -> Result<Self, RouteError> {
        let mut closure = Closure {
            patterns: Vec::with_capacity(groups.len()),
            blame: Vec::with_capacity(groups.len()),
            trie: Trie::default(),
        };
        let mut known: HashMap<Pattern, usize> = HashMap::with_capacity(groups.len());
        for (id, group) in groups.iter().enumerate() {
            closure.trie.insert(&group.pattern, id);
            closure.patterns.push(group.pattern.clone());
            closure
                .blame
                .push(group.routes.iter().copied().max().unwrap_or_default());
            known.insert(group.pattern.clone(), id);
        }
        let limit = groups
            .len()
            .saturating_mul(CLOSURE_FACTOR)
            .saturating_add(CLOSURE_SLACK);

        let mut work: Vec<usize> = (0..groups.len()).collect();
        let mut hits = Vec::new();
        while let Some(x) = work.pop() {
            let Some(px) = closure.patterns.get(x).cloned() else {
                continue;
            };
            let bx = closure.blame.get(x).copied().unwrap_or_default();
            hits.clear();
            closure.trie.overlapping(&px, &mut hits);
            for &y in &hits {
                let Some(py) = closure.patterns.get(y) else {
                    continue;
                };
                let Some(meet) = intersect(&px, py) else {
                    continue;
                };
                if known.contains_key(&meet) {
                    continue;
                }
                let blame = bx.max(closure.blame.get(y).copied().unwrap_or_default());
                let id = closure.patterns.len();
                if id >= limit {
                    return Err(RouteError {
                        index: blame,
                        message: format!(
                            "route patterns overlap in too many combinations \
                             (more than {limit} distinct intersections)"
                        ),
                    });
                }
                closure.trie.insert(&meet, id);
                known.insert(meet.clone(), id);
                closure.patterns.push(meet);
                closure.blame.push(blame);
                work.push(id);
            }
        }
        Ok(closure)
    }
}

/// Segment trie over patterns. At build time it answers "which patterns may
/// match a path that `q` matches" without scanning them all; at lookup time
/// it serves the patterns matchit cannot match without allocating.
#[derive(Default)]
struct Trie {
    statics: HashMap<String, Trie>,
    param: Option<Box<Trie>>,
    /// Pattern ending with a catch-all here.
    catch_all: Option<usize>,
    /// Pattern ending here.
    end: Option<usize>,
}

impl Trie {
    fn insert(&mut self, pattern: &[Seg], id: usize) {
        let mut node = self;
        for seg in pattern {
            node = match seg {
                Seg::Static(s) => node.statics.entry(s.clone()).or_default(),
                Seg::Param => node.param.get_or_insert_with(Box::default),
                Seg::CatchAll => {
                    node.catch_all = Some(id);
                    return;
                }
            };
        }
        node.end = Some(id);
    }

    /// Pushes (a superset of) the ids of patterns overlapping `q`.
    fn overlapping(&self, q: &[Seg], out: &mut Vec<usize>) {
        match q.split_first() {
            None => out.extend(self.end),
            Some((Seg::CatchAll, _)) => {
                // Anything below that matches a non-empty remainder.
                for (key, child) in &self.statics {
                    if !key.is_empty() {
                        child.all(out);
                    }
                }
                if let Some(child) = &self.param {
                    child.all(out);
                }
                out.extend(self.catch_all);
            }
            Some((Seg::Static(s), rest)) => {
                if let Some(child) = self.statics.get(s) {
                    child.overlapping(rest, out);
                }
                if !s.is_empty() {
                    if let Some(child) = &self.param {
                        child.overlapping(rest, out);
                    }
                    out.extend(self.catch_all);
                }
            }
            Some((Seg::Param, rest)) => {
                for (key, child) in &self.statics {
                    if !key.is_empty() {
                        child.overlapping(rest, out);
                    }
                }
                if let Some(child) = &self.param {
                    child.overlapping(rest, out);
                }
                out.extend(self.catch_all);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.statics.is_empty()
            && self.param.is_none()
            && self.catch_all.is_none()
            && self.end.is_none()
    }

    /// The id of the most specific pattern matching `path` (literal before
    /// parameter before catch-all, segment by segment), like matchit.
    /// Recursion depth is bounded by the trie's, not the path's.
    fn find(&self, path: &str) -> Option<usize> {
        self.find_after_slash(path.strip_prefix('/')?)
    }

    fn find_after_slash(&self, rest: &str) -> Option<usize> {
        let (seg, tail) = match rest.split_once('/') {
            Some((seg, tail)) => (seg, Some(tail)),
            None => (rest, None),
        };
        let descend = |child: &Trie| match tail {
            None => child.end,
            Some(tail) => child.find_after_slash(tail),
        };
        if let Some(hit) = self.statics.get(seg).and_then(descend) {
            return Some(hit);
        }
        if !seg.is_empty() {
            if let Some(hit) = self.param.as_deref().and_then(descend) {
                return Some(hit);
            }
        }
        self.catch_all.filter(|_| !rest.is_empty())
    }

    fn all(&self, out: &mut Vec<usize>) {
        out.extend(self.end);
        out.extend(self.catch_all);
        for child in self.statics.values() {
            child.all(out);
        }
        if let Some(child) = &self.param {
            child.all(out);
        }
    }
}

// ---------------------------------------------------------------------------
// Layers of matchit routers

/// matchit keeps up to this many parameters inline; a match with more
/// allocates (matchit 0.8 and 0.9 alike).
const MATCHIT_INLINE_PARAMS: usize = 3;

#[derive(Default)]
struct Layers {
    routers: Vec<matchit::Router<usize>>,
    shapes: Vec<Shape>,
}

/// Shape of the patterns in one layer, to keep literal and wildcard segments
/// from ever sharing a parent (matchit would then need to backtrack).
#[derive(Default)]
struct Shape {
    statics: HashMap<String, Shape>,
    param: Option<Box<Shape>>,
    catch_all: bool,
}

impl Shape {
    fn accepts(&self, pattern: &[Seg]) -> bool {
        match pattern.split_first() {
            None => true,
            Some((Seg::Static(s), _)) if s.is_empty() => true,
            Some((Seg::Static(s), rest)) => {
                self.param.is_none()
                    && !self.catch_all
                    && self.statics.get(s).is_none_or(|c| c.accepts(rest))
            }
            Some((Seg::Param, rest)) => {
                self.statics.is_empty()
                    && !self.catch_all
                    && self.param.as_ref().is_none_or(|c| c.accepts(rest))
            }
            Some((Seg::CatchAll, _)) => self.statics.is_empty() && self.param.is_none(),
        }
    }

    fn insert(&mut self, pattern: &[Seg]) {
        let mut node = self;
        for seg in pattern {
            node = match seg {
                Seg::Static(s) if s.is_empty() => return,
                Seg::Static(s) => node.statics.entry(s.clone()).or_default(),
                Seg::Param => node.param.get_or_insert_with(Box::default),
                Seg::CatchAll => {
                    node.catch_all = true;
                    return;
                }
            };
        }
    }
}

impl Layers {
    fn insert(&mut self, pattern: &[Seg], node: usize) -> Result<(), String> {
        let route = matchit_route(pattern);
        for (router, shape) in self.routers.iter_mut().zip(self.shapes.iter_mut()) {
            if !shape.accepts(pattern) {
                continue;
            }
            match router.insert(route.as_str(), node) {
                Ok(()) => {
                    shape.insert(pattern);
                    return Ok(());
                }
                Err(matchit::InsertError::Conflict { .. }) => continue,
                Err(e) => return Err(format!("invalid path pattern `{route}`: {e}")),
            }
        }
        let mut router = matchit::Router::new();
        router
            .insert(route.as_str(), node)
            .map_err(|e| format!("invalid path pattern `{route}`: {e}"))?;
        let mut shape = Shape::default();
        shape.insert(pattern);
        self.routers.push(router);
        self.shapes.push(shape);
        Ok(())
    }
}

/// The most route lookups [`RouteTable::serves_alone_below`] makes for one
/// request (each a fraction of a microsecond) before it answers no.
pub const MAX_LOOKUPS_BELOW: usize = 2048;

/// The most path bytes those lookups read in all: a long path looked up
/// thousands of times would cost milliseconds too.
pub const MAX_WITNESS_BYTES_BELOW: usize = 1 << 20;

/// A path of `shape`: its literals, and `%00` (which no canonical pattern
/// holds) for each `{name}`, and `depth` times for a `{*rest}`, then a
/// trailing slash if `slash`.
fn spelt(shape: &[Seg], depth: usize, slash: bool) -> String {
    const NO_LITERAL: &str = "/%00";
    let mut path = String::new();
    for seg in shape {
        match seg {
            Seg::Static(literal) => {
                path.push('/');
                path.push_str(literal);
            }
            Seg::Param => path.push_str(NO_LITERAL),
            Seg::CatchAll => {
                for _ in 0..depth {
                    path.push_str(NO_LITERAL);
                }
                if slash {
                    path.push('/');
                }
            }
        }
    }
    path
}

/// Whether two readings of one path lead to the same route, or alike to
/// none.
fn same_route<T>(a: &Lookup<'_, T>, b: &Lookup<'_, T>) -> bool {
    match (a, b) {
        (Lookup::Matched(a), Lookup::Matched(b)) => std::ptr::eq(*a, *b),
        (Lookup::NotFound, Lookup::NotFound) => true,
        (Lookup::MethodNotAllowed { .. }, Lookup::MethodNotAllowed { .. }) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(path: &str, methods: Option<&[Method]>, value: usize) -> RouteSpec<usize> {
        RouteSpec {
            path: path.to_string(),
            methods: methods.map(<[Method]>::to_vec),
            value,
        }
    }

    /// Readings of a path with `;` parameters that all find no route, or
    /// all a pattern without the method, agree: 404 and 405, not ambiguous.
    #[test]
    fn readings_that_all_miss_agree() {
        let t = table(&[("/admin", Some(GET)), ("/p/{name}", Some(GET))]);
        assert!(matches!(
            t.route(&Method::GET, "/nope;v"),
            Ok(Lookup::NotFound)
        ));
        assert!(matches!(
            t.route(&Method::POST, "/p/x;v"),
            Ok(Lookup::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            t.route(&Method::GET, "/p/x;v"),
            Ok(Lookup::Matched(1))
        ));
    }

    /// Thousands of routes below a path (each falling through to the
    /// public catch-all for this method) would take tens of thousands of
    /// lookups: past the bound the answer is no, and a few are still looked
    /// through.
    #[test]
    fn serves_alone_below_gives_up_past_its_lookup_bound() {
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        for (routes, alone) in [(10, true), (MAX_LOOKUPS_BELOW, false)] {
            let mut specs: Vec<_> = (0..routes)
                .map(|i| spec(&format!("/{{t}}/r{i}/{{*p}}"), Some(GET), i + 1))
                .collect();
            specs.push(spec("/{*page}", None, 0));
            let table = RouteTable::build_with(specs, MatchRules::default()).unwrap();
            let Ok(Lookup::Matched(route)) = table.route(&propfind, "/x") else {
                panic!("/x has the catch-all");
            };
            assert_eq!(*route, 0);
            assert_eq!(
                table.serves_alone_below(&propfind, "/x", route),
                alone,
                "{routes} routes"
            );
        }
    }

    /// The request's own depth does not set how many lookups are made: a
    /// path of thousands of segments under a public catch-all is checked
    /// in a few lookups, not given up on past the bound.
    #[test]
    fn serves_alone_below_costs_no_more_for_a_deeper_path() {
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        let table = RouteTable::build_with(
            vec![
                spec("/{*page}", None, 0),
                spec("/a/a/private/{*p}", None, 1),
            ],
            MatchRules::default(),
        )
        .unwrap();
        for (depth, alone) in [(1, false), (2, false), (3, true), (300, true), (7000, true)] {
            let path = "/a".repeat(depth);
            let Ok(Lookup::Matched(route)) = table.route(&propfind, &path) else {
                panic!("{depth}: the catch-all serves PROPFIND");
            };
            assert_eq!(*route, 0);
            assert_eq!(
                table.serves_alone_below(&propfind, &path, route),
                alone,
                "{depth} segments"
            );
        }
        // Depth is counted in segments, not bytes: one long segment has
        // `/{long}/{name}/secret` below it, another route's.
        let long = "l".repeat(MAX_PATTERN_SEGMENTS + 2);
        let table = RouteTable::build_with(
            vec![
                spec("/{*page}", None, 0),
                spec(&format!("/{long}/{{name}}/secret"), None, 1),
            ],
            MatchRules::default(),
        )
        .unwrap();
        let path = format!("/{long}");
        let Ok(Lookup::Matched(route)) = table.route(&propfind, &path) else {
            panic!("the catch-all serves PROPFIND");
        };
        assert_eq!(*route, 0);
        assert!(!table.serves_alone_below(&propfind, &path, route));
        // A catch-all as deep as patterns go still claims the paths below
        // ones deeper than it, on either side of the depth where the check
        // stops building shapes.
        let deepest = format!("{}/{{*p}}", "/a".repeat(MAX_PATTERN_SEGMENTS - 1));
        let table = RouteTable::build_with(
            vec![spec("/{*page}", None, 0), spec(&deepest, None, 1)],
            MatchRules::default(),
        )
        .unwrap();
        for depth in [1, 126, 127, 128, 129, 130, 1000] {
            for (path, alone) in [("/a".repeat(depth), false), ("/b".repeat(depth), true)] {
                let route = match table.route(&propfind, &path) {
                    Ok(Lookup::Matched(route)) => route,
                    other => panic!("{depth}: {other:?}"),
                };
                if *route == 1 {
                    continue;
                }
                assert_eq!(
                    table.serves_alone_below(&propfind, &path, route),
                    alone,
                    "{} {depth} segments",
                    &path[..2]
                );
            }
        }
    }

    #[test]
    fn serves_alone_below_looks_at_every_route_under_a_path() {
        let copy = Method::from_bytes(b"COPY").unwrap();
        for rules in [
            MatchRules::default(),
            MatchRules {
                case_insensitive: true,
                ignore_trailing_slash: true,
            },
        ] {
            let table = RouteTable::build_with(
                vec![
                    spec("/files/private/{*p}", None, 1),
                    spec("/files/{name}/shared", Some(GET), 2),
                    spec("/docs/{*p}", None, 3),
                    spec("/docs/{name}", None, 4),
                    spec("/{*page}", None, 0),
                ],
                rules,
            )
            .unwrap();
            // (method, path, alone below it)
            for (method, path, alone) in [
                (&copy, "/d", true),
                (&copy, "/d/a/", true),
                // `/docs/{name}`, with `/docs/{*p}` below.
                (&copy, "/docs/a", false),
                (&copy, "/docs/a/b", true),
                (&copy, "/docs", false),
                (&copy, "/files", false),
                (&copy, "/files/", false),
                (&copy, "/files/private", false),
                (&copy, "/files/private/a", true),
                // `shared` takes GET only: COPY below falls to the catch-all.
                (&copy, "/files/x", true),
                (&Method::GET, "/files/x", false),
                // Read with its parameters dropped, `/files`.
                (&copy, "/files;v", false),
                (&copy, "/", false),
            ] {
                let Ok(Lookup::Matched(route)) = table.route(method, path) else {
                    assert_eq!(path, "/", "{path} has a route");
                    continue;
                };
                assert_eq!(
                    table.serves_alone_below(method, path, route),
                    alone,
                    "{method} {path} {rules:?}"
                );
            }
            let catch_all = table.routes.get(4).map(|r| &r.value).unwrap();
            assert!(!table.serves_alone_below(&copy, "/", catch_all));
            assert_eq!(
                table.serves_alone_below(&copy, "/FILES", catch_all),
                !rules.case_insensitive
            );
        }
    }

    fn table(specs: &[(&str, Option<&[Method]>)]) -> RouteTable<usize> {
        let specs = specs
            .iter()
            .enumerate()
            .map(|(i, (p, m))| spec(p, *m, i))
            .collect();
        match RouteTable::build(specs) {
            Ok(t) => t,
            Err(e) => panic!("build failed: {e}"),
        }
    }

    fn build_err(specs: &[(&str, Option<&[Method]>)]) -> RouteError {
        let specs = specs
            .iter()
            .enumerate()
            .map(|(i, (p, m))| spec(p, *m, i))
            .collect();
        match RouteTable::build(specs) {
            Ok(_) => panic!("build unexpectedly succeeded"),
            Err(e) => e,
        }
    }

    fn matched(t: &RouteTable<usize>, m: &Method, path: &str) -> Option<usize> {
        match t.lookup(m, path) {
            Lookup::Matched(v) => Some(*v),
            _ => None,
        }
    }

    fn allow(t: &RouteTable<usize>, m: &Method, path: &str) -> Option<String> {
        match t.lookup(m, path) {
            Lookup::MethodNotAllowed { allow } => allow.to_str().ok().map(str::to_string),
            _ => None,
        }
    }

    const GET: &[Method] = &[Method::GET];
    const POST: &[Method] = &[Method::POST];
    const DELETE: &[Method] = &[Method::DELETE];
    const WRITE: &[Method] = &[Method::POST, Method::PUT, Method::DELETE];

    /// What an answer about a routed path (an `OPTIONS` with
    /// `Max-Forwards: 0`) lists: the 405's methods, none where a route takes
    /// any method (HEAD with GET), and the path read as routing reads it.
    #[test]
    fn allow_lists_the_methods_routed_for_a_path() {
        let t = table(&[
            ("/orders/{id}", Some(GET)),
            ("/orders/{*rest}", Some(WRITE)),
            ("/open", None),
        ]);
        let listed = |path: &str| {
            t.allow(path)
                .and_then(|v| v.to_str().ok().map(str::to_owned))
        };
        assert_eq!(
            listed("/orders/42").as_deref(),
            Some("DELETE, GET, HEAD, POST, PUT")
        );
        assert_eq!(
            listed("/orders/42/items").as_deref(),
            Some("DELETE, POST, PUT")
        );
        assert_eq!(
            listed("/orders/42;v=1").as_deref(),
            Some("DELETE, GET, HEAD, POST, PUT")
        );
        assert_eq!(listed("/open"), None);
        assert_eq!(listed("/nowhere"), None);
    }

    #[test]
    fn example_config_param_and_catch_all() {
        for reversed in [false, true] {
            let mut specs = vec![
                ("/orders/{id}", Some(GET)),
                ("/orders/{*rest}", Some(WRITE)),
            ];
            if reversed {
                specs.reverse();
            }
            let t = table(&specs);
            let (get_route, write_route) = if reversed { (1, 0) } else { (0, 1) };
            assert_eq!(matched(&t, &Method::GET, "/orders/42"), Some(get_route));
            assert_eq!(matched(&t, &Method::POST, "/orders/42"), Some(write_route));
            assert_eq!(
                matched(&t, &Method::DELETE, "/orders/42"),
                Some(write_route)
            );
            assert_eq!(
                matched(&t, &Method::PUT, "/orders/42/items"),
                Some(write_route)
            );
            assert_eq!(
                allow(&t, &Method::GET, "/orders/42/items").as_deref(),
                Some("DELETE, POST, PUT")
            );
            assert_eq!(
                allow(&t, &Method::PATCH, "/orders/42").as_deref(),
                Some("DELETE, GET, HEAD, POST, PUT")
            );
            assert_eq!(t.lookup(&Method::GET, "/orders"), Lookup::NotFound);
            assert_eq!(t.lookup(&Method::POST, "/orders/"), Lookup::NotFound);
            assert_eq!(t.lookup(&Method::GET, "/order/42"), Lookup::NotFound);
        }
    }

    #[test]
    fn disjoint_methods_share_a_path() {
        let t = table(&[
            ("/orders/{id}", Some(GET)),
            ("/orders/{order_id}", Some(DELETE)),
        ]);
        assert_eq!(matched(&t, &Method::GET, "/orders/1"), Some(0));
        assert_eq!(matched(&t, &Method::DELETE, "/orders/1"), Some(1));
        assert_eq!(
            allow(&t, &Method::PUT, "/orders/1").as_deref(),
            Some("DELETE, GET, HEAD")
        );
        assert_eq!(t.lookup(&Method::GET, "/orders/1/x"), Lookup::NotFound);
    }

    #[test]
    fn overlapping_methods_on_same_path_conflict() {
        let e = build_err(&[
            ("/a", Some(GET)),
            ("/orders/{id}", Some(&[Method::GET, Method::PUT])),
            ("/orders/{oid}", Some(&[Method::PUT, Method::POST])),
        ]);
        assert_eq!(e.index, 2);
        assert!(e.message.contains("route #2 of `routes`"), "{e}");
        assert!(e.message.contains("/orders/{id}"), "{e}");
        assert!(e.message.contains("PUT"), "{e}");
        assert_eq!(e.to_string(), format!("route 2: {}", e.message));
    }

    #[test]
    fn any_method_conflicts_with_same_path() {
        let e = build_err(&[("/x", Some(GET)), ("/x", None)]);
        assert_eq!(e.index, 1);
        assert!(e.message.contains("route #1 of `routes`"), "{e}");
        let e = build_err(&[("/x", None), ("/y", None), ("/x", Some(POST))]);
        assert_eq!(e.index, 2);
        assert!(e.message.contains("route #1 of `routes`"), "{e}");
        let e = build_err(&[("/x/{a}", None), ("/x/{b}", None)]);
        assert_eq!(e.index, 1);
    }

    #[test]
    fn any_method_routes() {
        let t = table(&[
            ("/health", None),
            ("/files/{*p}", None),
            ("/files/special", Some(POST)),
        ]);
        assert_eq!(matched(&t, &Method::GET, "/health"), Some(0));
        assert_eq!(
            matched(
                &t,
                &Method::from_bytes(b"PURGE").ok().unwrap_or_default(),
                "/health"
            ),
            Some(0)
        );
        assert_eq!(matched(&t, &Method::POST, "/files/special"), Some(2));
        // Falls back to the catch-all for other methods.
        assert_eq!(matched(&t, &Method::GET, "/files/special"), Some(1));
        assert_eq!(matched(&t, &Method::GET, "/files/a/b"), Some(1));
    }

    #[test]
    fn head_goes_where_get_goes() {
        let t = table(&[
            ("/files/{id}", Some(&[Method::GET])),
            ("/files/{*rest}", None),
            ("/docs/{id}", Some(&[Method::GET])),
            ("/docs/{id}", Some(&[Method::HEAD])),
            ("/feed", Some(&[Method::GET, Method::POST])),
        ]);
        // Not to the broader any-method route.
        assert_eq!(matched(&t, &Method::HEAD, "/files/7"), Some(0));
        assert_eq!(matched(&t, &Method::PUT, "/files/7"), Some(1));
        assert_eq!(matched(&t, &Method::HEAD, "/files/7/x"), Some(1));
        // A route that lists HEAD itself takes it.
        assert_eq!(matched(&t, &Method::HEAD, "/docs/1"), Some(3));
        assert_eq!(matched(&t, &Method::GET, "/docs/1"), Some(2));
        assert_eq!(matched(&t, &Method::HEAD, "/feed"), Some(4));
        assert_eq!(
            allow(&t, &Method::PUT, "/feed").as_deref(),
            Some("GET, HEAD, POST")
        );
        // A public HEAD route elsewhere does not take HEAD from a GET one.
        let t = table(&[
            ("/files/{id}", Some(&[Method::GET])),
            ("/{*rest}", Some(&[Method::HEAD, Method::OPTIONS])),
        ]);
        assert_eq!(matched(&t, &Method::HEAD, "/files/7"), Some(0));
        assert_eq!(matched(&t, &Method::HEAD, "/other"), Some(1));
    }

    #[test]
    fn folding_rules_fold_literals_not_parameter_names() {
        let rules = MatchRules {
            case_insensitive: true,
            ignore_trailing_slash: true,
        };
        let specs = vec![
            spec("/orders/{orderId}", Some(GET), 0),
            spec("/files/{*restPath}", None, 1),
            // The root keeps its slash: there is nothing to drop.
            spec("/", Some(GET), 2),
        ];
        let t = match RouteTable::build_with(specs, rules) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let found = |path: &str| match t.route(&Method::GET, path) {
            Ok(Lookup::Matched(&v)) => Some(v),
            _ => None,
        };
        assert_eq!(found("/ORDERS/7/"), Some(0));
        assert_eq!(found("/Files/A/B"), Some(1));
        assert_eq!(found("/"), Some(2));
        for (pattern, needle) in [
            ("/Orders/{id}", "routed as `/orders/{id}`"),
            ("/orders/", "routed as `/orders`"),
            ("/caf%C3%A9", "non-ASCII"),
            ("/{{Admin}}", "routed as `/{{admin}}`"),
        ] {
            let e = RouteTable::build_with(vec![spec(pattern, None, 0)], rules)
                .err()
                .map(|e| e.message)
                .unwrap_or_default();
            assert!(e.contains(needle), "{pattern}: {e}");
        }
    }

    #[test]
    fn empty_method_list_rejected() {
        let e = build_err(&[("/x", Some(&[]))]);
        assert_eq!(e.index, 0);
        assert!(e.message.contains("empty"), "{e}");
    }

    #[test]
    fn whole_segments_case_and_trailing_slash() {
        let t = table(&[("/admin", Some(GET)), ("/api/{v}", Some(GET))]);
        assert_eq!(matched(&t, &Method::GET, "/admin"), Some(0));
        for path in [
            "/administrator",
            "/admin/",
            "/Admin",
            "/ADMIN",
            "/admin/x",
            "/adm",
            "/",
            "/api",
            "/api/",
            "/api/v1/",
            "/api/v1/x",
            "/API/v1",
        ] {
            assert_eq!(t.lookup(&Method::GET, path), Lookup::NotFound, "{path}");
        }
        assert_eq!(matched(&t, &Method::GET, "/api/v1"), Some(1));

        let t = table(&[("/a/", Some(GET)), ("/", Some(POST))]);
        assert_eq!(matched(&t, &Method::GET, "/a/"), Some(0));
        assert_eq!(t.lookup(&Method::GET, "/a"), Lookup::NotFound);
        assert_eq!(matched(&t, &Method::POST, "/"), Some(1));
        assert_eq!(allow(&t, &Method::GET, "/").as_deref(), Some("POST"));
    }

    #[test]
    fn catch_all_needs_at_least_one_char() {
        let t = table(&[("/files/{*path}", Some(GET)), ("/{*all}", Some(POST))]);
        assert_eq!(matched(&t, &Method::GET, "/files/a"), Some(0));
        assert_eq!(matched(&t, &Method::GET, "/files/a/b/c/"), Some(0));
        assert_eq!(matched(&t, &Method::GET, "/files/a/"), Some(0));
        assert_eq!(allow(&t, &Method::GET, "/files/").as_deref(), Some("POST"));
        assert_eq!(allow(&t, &Method::GET, "/files").as_deref(), Some("POST"));
        assert_eq!(matched(&t, &Method::POST, "/files/x"), Some(1));
        assert_eq!(t.lookup(&Method::POST, "/"), Lookup::NotFound);
    }

    #[test]
    fn most_specific_pattern_wins() {
        let t = table(&[
            ("/users/{id}", Some(GET)),
            ("/users/me", Some(GET)),
            ("/users/{*rest}", Some(GET)),
            ("/users/{id}/posts", Some(GET)),
        ]);
        assert_eq!(matched(&t, &Method::GET, "/users/me"), Some(1));
        assert_eq!(matched(&t, &Method::GET, "/users/42"), Some(0));
        assert_eq!(matched(&t, &Method::GET, "/users/me/posts"), Some(3));
        assert_eq!(matched(&t, &Method::GET, "/users/me/likes"), Some(2));
        assert_eq!(matched(&t, &Method::GET, "/users/42/"), Some(2));
        assert_eq!(
            allow(&t, &Method::POST, "/users/me").as_deref(),
            Some("GET, HEAD")
        );
    }

    #[test]
    fn partially_overlapping_patterns() {
        let t = table(&[("/a/{x}/c", Some(GET)), ("/a/b/{y}", Some(POST))]);
        assert_eq!(matched(&t, &Method::GET, "/a/b/c"), Some(0));
        assert_eq!(matched(&t, &Method::POST, "/a/b/c"), Some(1));
        assert_eq!(
            allow(&t, &Method::PUT, "/a/b/c").as_deref(),
            Some("GET, HEAD, POST")
        );
        assert_eq!(allow(&t, &Method::PUT, "/a/b/d").as_deref(), Some("POST"));
        assert_eq!(
            allow(&t, &Method::PUT, "/a/z/c").as_deref(),
            Some("GET, HEAD")
        );
        assert_eq!(t.lookup(&Method::GET, "/a/z/d"), Lookup::NotFound);

        // Same method on both: the literal-first pattern is more specific.
        let t = table(&[("/a/{x}/c", Some(GET)), ("/a/b/{y}", Some(GET))]);
        assert_eq!(matched(&t, &Method::GET, "/a/b/c"), Some(1));
        assert_eq!(matched(&t, &Method::GET, "/a/q/c"), Some(0));
    }

    #[test]
    fn literal_braces() {
        let t = table(&[("/x/{{id}}", Some(GET)), ("/x/{id}/y", Some(GET))]);
        assert_eq!(matched(&t, &Method::GET, "/x/{id}"), Some(0));
        assert_eq!(t.lookup(&Method::GET, "/x/42"), Lookup::NotFound);
        assert_eq!(matched(&t, &Method::GET, "/x/{id}/y"), Some(1));
    }

    /// `[ ] ^ | " { }` arrive raw and escaped: a route literal holding them
    /// takes the raw spelling, which Go and Spring decode the escaped one
    /// to, and the escaped one is refused where it is a broader route's for
    /// servers that keep it (Express).
    #[test]
    fn raw_and_escaped_spellings_of_a_literal_are_one_route_or_refused() {
        let t = table(&[
            ("/s/a[b]", Some(GET)),
            ("/q/{{x}}|\"^", Some(GET)),
            ("/{*page}", None),
        ]);
        let found = |path: &str| match t.route(&Method::GET, path) {
            Ok(Lookup::Matched(&v)) => Ok(v),
            Ok(_) => Err(None),
            Err(e) => Err(Some(e)),
        };
        assert_eq!(found("/s/a[b]"), Ok(0));
        assert_eq!(found("/q/{x}|\"^"), Ok(1));
        for path in [
            "/s/a%5Bb%5D",
            "/s/a[b%5D",
            "/q/%7Bx%7D%7C%22%5E",
            "/q/{x}|%22^",
        ] {
            assert_eq!(found(path), Err(Some(PathError::AmbiguousRoute)), "{path}");
        }
        // Elsewhere both spellings are the catch-all's.
        assert_eq!(found("/x/a%5Bb%5D"), Ok(2));
        assert_eq!(found("/x/a[b]"), Ok(2));
    }

    #[test]
    fn other_punctuation_is_literal() {
        let t = table(&[
            ("/a*b", Some(GET)),
            ("/:id", Some(GET)),
            ("/s/*", Some(GET)),
            ("/e/:", Some(GET)),
        ]);
        assert_eq!(matched(&t, &Method::GET, "/a*b"), Some(0));
        assert_eq!(t.lookup(&Method::GET, "/axb"), Lookup::NotFound);
        assert_eq!(matched(&t, &Method::GET, "/:id"), Some(1));
        assert_eq!(t.lookup(&Method::GET, "/42"), Lookup::NotFound);
        assert_eq!(matched(&t, &Method::GET, "/s/*"), Some(2));
        assert_eq!(t.lookup(&Method::GET, "/s/x"), Lookup::NotFound);
        assert_eq!(matched(&t, &Method::GET, "/e/:"), Some(3));
    }

    #[test]
    fn bad_patterns_rejected() {
        for (pattern, needle) in [
            ("orders", "start with '/'"),
            ("", "start with '/'"),
            ("*", "start with '/'"),
            ("/a//b", "not canonical"),
            ("/a/./b", "not canonical"),
            ("/a/../b", "not canonical"),
            ("/a/%2e/b", "not canonical"),
            ("/%41", "not canonical"),
            ("/a/%3a", "not canonical"),
            ("/a/%3A", "routed as `/a/:`"),
            ("/m;v=1/x", "routed as `/m/x`"),
            ("/a;", "routed as `/a`"),
            ("/s/a%5Bb%5D", "routed as `/s/a[b]`"),
            ("/s/a%5E%7C%22", "routed as `/s/a^|\"`"),
            ("/a%3Bb", "escaped `;`"),
            (
                "/search/a<b>",
                "raw `<`, which no request path can (write %3C)",
            ),
            ("/a b", "write %20"),
            ("/a`b", "write %60"),
            ("/a?b", "write %3F"),
            ("/a/%7Bid%7D", "literal brace as `{{` or `}}`"),
            ("/a/%7Bid", "literal brace as `{{` or `}}`"),
            ("/a/id%7D", "literal brace as `{{` or `}}`"),
            ("/a/%2F", "encoded slash"),
            ("/a\\b", "backslash"),
            ("/a#b", "fragment"),
            ("/a/{id}x", "whole segment"),
            ("/a/x{id}", "whole segment"),
            ("/a/{a}{b}", "whole segment"),
            ("/a/{id", "whole segment"),
            ("/a/id}", "whole segment"),
            ("/a/{}", "needs a name"),
            ("/a/{*}", "needs a name"),
            ("/a/{*rest}/b", "last segment"),
            ("/a/{*rest}/", "last segment"),
            ("/a/{*re*st}", "`*` is not allowed"),
        ] {
            let e = build_err(&[("/ok", Some(GET)), (pattern, Some(GET))]);
            assert_eq!(e.index, 1, "{pattern}");
            assert!(e.message.contains(needle), "{pattern}: {e}");
        }
    }

    #[test]
    fn patterns_have_at_most_128_segments() {
        let deepest = "/{p}".repeat(MAX_PATTERN_SEGMENTS);
        let t = table(&[(&deepest, Some(GET))]);
        assert_eq!(matched(&t, &Method::GET, &"/x".repeat(128)), Some(0));
        assert_eq!(t.lookup(&Method::GET, &"/x".repeat(129)), Lookup::NotFound);
        let e = build_err(&[("/ok", Some(GET)), (&"/a".repeat(129), Some(GET))]);
        assert_eq!(e.index, 1);
        assert!(e.message.contains("129 segments: at most 128"), "{e}");
    }

    #[test]
    fn many_wildcards_use_the_trie() {
        let t = table(&[
            ("/o/{a}/r/{b}/i/{c}/c/{d}", Some(GET)),
            ("/o/{a}/r/{b}/i/{c}/{*rest}", Some(POST)),
            ("/o/{a}/r/{b}/i/{c}/c/me", Some(GET)),
            ("/o/{a}/r/{b}/i/{c}", Some(GET)),
        ]);
        assert!(!t.wide.is_empty());
        assert!(format!("{t:?}").contains("wide: true"), "{t:?}");
        let narrow = table(&[("/o/{a}/r/{b}/i/{c}", Some(GET))]);
        assert!(format!("{narrow:?}").contains("wide: false"), "{narrow:?}");
        assert_eq!(matched(&t, &Method::GET, "/o/1/r/2/i/3/c/4"), Some(0));
        assert_eq!(matched(&t, &Method::GET, "/o/1/r/2/i/3/c/me"), Some(2));
        assert_eq!(matched(&t, &Method::POST, "/o/1/r/2/i/3/c/4"), Some(1));
        assert_eq!(matched(&t, &Method::POST, "/o/1/r/2/i/3/x/y/"), Some(1));
        assert_eq!(matched(&t, &Method::GET, "/o/1/r/2/i/3"), Some(3));
        assert_eq!(
            allow(&t, &Method::PUT, "/o/1/r/2/i/3/c/4").as_deref(),
            Some("GET, HEAD, POST")
        );
        assert_eq!(t.lookup(&Method::GET, "/o/1/r/2/i/3/"), Lookup::NotFound);
        assert_eq!(t.lookup(&Method::GET, "/o/1/r//i/3/c/4"), Lookup::NotFound);
        assert_eq!(t.lookup(&Method::GET, "o/1/r/2/i/3/c/4"), Lookup::NotFound);
    }

    #[test]
    fn table_is_shareable_across_threads() {
        fn assert_send_sync<X: Send + Sync>() {}
        assert_send_sync::<RouteTable<String>>();
        assert_send_sync::<RouteError>();
    }

    #[test]
    fn iter_len_and_empty() {
        let t = table(&[("/b", None), ("/a/{id}", Some(&[Method::PUT, Method::GET]))]);
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
        let listed: Vec<_> = t.iter().collect();
        assert_eq!(
            listed,
            vec![
                ("/b", None, &0),
                ("/a/{id}", Some(&[Method::PUT, Method::GET][..]), &1),
            ]
        );
        let empty = table(&[]);
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.lookup(&Method::GET, "/"), Lookup::NotFound);
    }

    #[test]
    fn ten_thousand_routes() {
        let mut specs = Vec::new();
        for i in 0..10_000 {
            let path = match i % 4 {
                0 => format!("/svc{i}/items"),
                1 => format!("/svc{i}/items/{{id}}"),
                2 => format!("/api/v1/thing{i}/{{id}}/sub/{{sub}}"),
                _ => format!("/static{i}/{{*rest}}"),
            };
            specs.push(spec(&path, Some(GET), i));
        }
        // Plus some overlapping ones that force extra layers.
        specs.push(spec("/api/v1/{kind}/{id}/sub/{sub}", Some(POST), 10_000));
        specs.push(spec("/{*fallback}", Some(DELETE), 10_001));
        let t = match RouteTable::build(specs) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert!(t.layers.len() <= 3, "{} layers", t.layers.len());
        for i in 0..10_000 {
            let path = match i % 4 {
                0 => format!("/svc{i}/items"),
                1 => format!("/svc{i}/items/42"),
                2 => format!("/api/v1/thing{i}/7/sub/8"),
                _ => format!("/static{i}/a/b/"),
            };
            assert_eq!(matched(&t, &Method::GET, &path), Some(i), "{path}");
            assert_eq!(matched(&t, &Method::DELETE, &path), Some(10_001), "{path}");
            if i % 4 == 2 {
                assert_eq!(matched(&t, &Method::POST, &path), Some(10_000), "{path}");
            } else {
                assert_eq!(
                    allow(&t, &Method::POST, &path).as_deref(),
                    Some("DELETE, GET, HEAD")
                );
            }
        }
        assert_eq!(
            matched(&t, &Method::POST, "/api/v1/other/1/sub/2"),
            Some(10_000)
        );
        assert_eq!(allow(&t, &Method::GET, "/nope").as_deref(), Some("DELETE"));
    }

    #[test]
    fn too_many_intersections_is_an_error_not_a_hang() {
        // Every `/{p}/.../lit_i/...` crossed with every `/lit_j/{p}/...`.
        let mut specs = Vec::new();
        for i in 0..100 {
            specs.push(spec(&format!("/{{a}}/{{b}}/x{i}"), Some(GET), i));
            specs.push(spec(&format!("/y{i}/{{a}}/{{b}}"), Some(GET), i));
            specs.push(spec(&format!("/{{a}}/z{i}/{{b}}"), Some(GET), i));
        }
        match RouteTable::build(specs) {
            Ok(t) => assert!(t.nodes.len() > 300),
            Err(e) => assert!(e.message.contains("too many"), "{e}"),
        }
    }

    // ---- reference model -------------------------------------------------

    /// Independent matcher: does `pattern` (matchit syntax) match `path`?
    fn model_matches(pattern: &str, path: &str) -> bool {
        let p: Vec<&str> = pattern[1..].split('/').collect();
        let s: Vec<&str> = path[1..].split('/').collect();
        fn go(p: &[&str], s: &[&str]) -> bool {
            match (p.first(), s.first()) {
                (Some(ps), _) if ps.starts_with("{*") => !s.join("/").is_empty(),
                (None, None) => true,
                (Some(ps), Some(ss)) if ps.starts_with('{') => {
                    !ss.is_empty() && go(&p[1..], &s[1..])
                }
                (Some(ps), Some(ss)) => ps == ss && go(&p[1..], &s[1..]),
                _ => false,
            }
        }
        go(&p, &s)
    }

    fn model_key(pattern: &str) -> Vec<u8> {
        pattern[1..]
            .split('/')
            .map(|seg| {
                if seg.starts_with("{*") {
                    2
                } else if seg.starts_with('{') {
                    1
                } else {
                    0
                }
            })
            .collect()
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        Matched(usize),
        NotAllowed(String),
        NotFound,
    }

    fn model_lookup(specs: &[RouteSpec<usize>], method: &Method, path: &str) -> Expect {
        let mut hits: Vec<&RouteSpec<usize>> = specs
            .iter()
            .filter(|s| model_matches(&s.path, path))
            .collect();
        if hits.is_empty() {
            return Expect::NotFound;
        }
        hits.sort_by_key(|s| model_key(&s.path));
        let lists =
            |s: &RouteSpec<usize>, m: &Method| s.methods.as_ref().is_some_and(|ms| ms.contains(m));
        if *method == Method::HEAD {
            // The most specific pattern with a route for HEAD, for GET or
            // for any method, in that order within the pattern.
            let mut patterns: Vec<&str> = hits.iter().map(|s| s.path.as_str()).collect();
            patterns.dedup();
            for pattern in patterns {
                let group: Vec<_> = hits.iter().filter(|s| s.path == pattern).collect();
                let chosen = group
                    .iter()
                    .find(|s| lists(s, &Method::HEAD))
                    .or_else(|| group.iter().find(|s| lists(s, &Method::GET)))
                    .or_else(|| group.iter().find(|s| s.methods.is_none()));
                if let Some(s) = chosen {
                    return Expect::Matched(s.value);
                }
            }
        } else if let Some(s) = hits
            .iter()
            .find(|s| s.methods.as_ref().is_none_or(|ms| ms.contains(method)))
        {
            return Expect::Matched(s.value);
        }
        let get_listed = hits.iter().any(|s| lists(s, &Method::GET));
        let mut names: Vec<&str> = hits
            .iter()
            .flat_map(|s| s.methods.iter().flatten())
            .map(Method::as_str)
            .chain(get_listed.then_some("HEAD"))
            .collect();
        names.sort_unstable();
        names.dedup();
        Expect::NotAllowed(names.join(", "))
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        let seg = prop_oneof![
            3 => Just("a"),
            2 => Just("b"),
            3 => Just("{x}"),
        ];
        (
            proptest::collection::vec(seg, 0..6),
            prop_oneof![Just(""), Just("/"), Just("/{*r}")],
        )
            .prop_map(|(segs, tail)| {
                let body: String = segs.iter().map(|s| format!("/{s}")).collect();
                if body.is_empty() && tail.is_empty() {
                    "/".to_string()
                } else {
                    format!("{body}{tail}")
                }
            })
    }

    fn methods_strategy() -> impl Strategy<Value = Option<Vec<Method>>> {
        prop_oneof![
            1 => Just(None),
            4 => proptest::sample::subsequence(vec![Method::GET, Method::HEAD, Method::POST, Method::PUT], 1..=2)
                .prop_map(Some),
        ]
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 0..7),
            any::<bool>(),
        )
            .prop_map(|(segs, slash)| {
                let body: String = segs.iter().map(|s| format!("/{s}")).collect();
                if body.is_empty() || slash {
                    format!("{body}/")
                } else {
                    body
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The table answers exactly like a brute-force scan over all routes.
        #[test]
        fn agrees_with_reference_model(
            candidates in proptest::collection::vec((pattern_strategy(), methods_strategy()), 1..10),
            paths in proptest::collection::vec(path_strategy(), 1..20),
        ) {
            // Keep the candidates that do not conflict with earlier ones.
            let mut specs: Vec<RouteSpec<usize>> = Vec::new();
            for (path, methods) in candidates {
                let mut trial = specs.clone();
                trial.push(RouteSpec { path, methods, value: specs.len() });
                if RouteTable::build(trial.clone()).is_ok() {
                    specs = trial;
                }
            }
            let t = match RouteTable::build(specs.clone()) {
                Ok(t) => t,
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            for path in &paths {
                for method in [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE] {
                    let got = match t.lookup(&method, path) {
                        Lookup::Matched(v) => Expect::Matched(*v),
                        Lookup::MethodNotAllowed { allow } => {
                            Expect::NotAllowed(allow.to_str().unwrap_or("<bad>").to_string())
                        }
                        Lookup::NotFound => Expect::NotFound,
                    };
                    let want = model_lookup(&specs, &method, path);
                    prop_assert_eq!(got, want, "{} {} with {:?}", method, path, specs);
                }
            }
        }

        /// Conflicts are exactly "same normalised pattern, overlapping methods".
        #[test]
        fn conflicts_agree_with_model(
            candidates in proptest::collection::vec((pattern_strategy(), methods_strategy()), 1..8),
        ) {
            let specs: Vec<RouteSpec<usize>> = candidates
                .into_iter()
                .enumerate()
                .map(|(value, (path, methods))| RouteSpec { path, methods, value })
                .collect();
            let norm = |p: &str| p.replace("{x}", "{}").replace("{*r}", "{*}");
            let first_conflict = specs.iter().enumerate().find_map(|(j, later)| {
                specs[..j]
                    .iter()
                    .any(|earlier| {
                        norm(&earlier.path) == norm(&later.path)
                            && match (&earlier.methods, &later.methods) {
                                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                                _ => true,
                            }
                    })
                    .then_some(j)
            });
            let got = RouteTable::build(specs).err().map(|e| e.index);
            prop_assert_eq!(got, first_conflict);
        }

        /// Intersection is exact: p ∩ q matches a path iff both p and q do.
        #[test]
        fn intersection_is_exact(p in pattern_strategy(), q in pattern_strategy(), path in path_strategy()) {
            let (Ok(pp), Ok(pq)) = (
                parse_pattern(&p, MatchRules::default()),
                parse_pattern(&q, MatchRules::default()),
            ) else {
                return Err(TestCaseError::fail("pattern failed to parse"));
            };
            let both = model_matches(&p, &path) && model_matches(&q, &path);
            let via = intersect(&pp, &pq).is_some_and(|i| model_matches(&matchit_route(&i), &path));
            prop_assert_eq!(both, via);
        }
    }
}
