//! Generated ConfigMap updates through hot reload, with requests between
//! them, against the reference of `tests/support/route_maps.rs`.
//!
//! Each case serves a generated route map from a kubelet-style directory,
//! then applies one to four updates as the kubelet does (a new revision
//! directory, `..data` swapped to it): another generated map, or one
//! broken in one place (a route naming no upstream, a scope that is no
//! scope token, a public route with scopes, YAML cut off). After each,
//! once `scopegate_config_reloads_total` has counted it, requests are sent.
//! The reference says:
//! - a map that loads replaces the last one whole: every request is
//!   answered as the new map says (routes gone are 404, new ones serve);
//! - a broken one is counted as refused, and the last good map keeps
//!   serving, every request answered as that map says.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 24).

use super::*;

use proptest::prelude::*;
use support::route_maps::{self, Map, Req};

/// The one fault of a broken update.
#[derive(Debug, Clone, Copy)]
enum Fault {
    UnknownUpstream,
    BadScope,
    PublicWithScopes,
    CutOff,
}

#[derive(Debug, Clone)]
enum Update {
    Map(Map),
    /// A map with a fault added.
    Broken(Map, Fault),
}

#[derive(Debug, Clone)]
struct Step {
    update: Update,
    requests: Vec<Req>,
}

#[derive(Debug, Clone)]
struct Case {
    first: Map,
    steps: Vec<Step>,
}

fn step() -> impl Strategy<Value = Step> {
    let fault = prop::sample::select(vec![
        Fault::UnknownUpstream,
        Fault::BadScope,
        Fault::PublicWithScopes,
        Fault::CutOff,
    ]);
    let update = prop_oneof![
        3 => route_maps::map().prop_map(Update::Map),
        1 => (route_maps::map(), fault).prop_map(|(map, fault)| Update::Broken(map, fault)),
    ];
    // Any prefix a map may have (0 to 4), so requests reach old routes too,
    // and one no map has.
    (update, prop::collection::vec(route_maps::request(5), 1..=4))
        .prop_map(|(update, requests)| Step { update, requests })
}

fn case() -> impl Strategy<Value = Case> {
    (route_maps::map(), prop::collection::vec(step(), 1..=4))
        .prop_map(|(first, steps)| Case { first, steps })
}

/// The text of revision `revision` of `update` (a comment makes every
/// revision's text its own, so that each is read and counted).
fn text(world: &World, update: &Update, revision: u32) -> String {
    let mut text = format!("# revision {revision}\n");
    match update {
        Update::Map(map) => text.push_str(&route_maps::yaml(world, map)),
        Update::Broken(map, fault) => {
            text.push_str(&route_maps::yaml(world, map));
            text.push_str(match fault {
                Fault::UnknownUpstream => "  - path: /zz\n    upstream: nowhere\n",
                Fault::BadScope => "  - path: /zz\n    upstream: app\n    scopes: [\"s1 s2\"]\n",
                Fault::PublicWithScopes => {
                    "  - path: /zz\n    upstream: app\n    auth: none\n    scopes: [s1]\n"
                }
                Fault::CutOff => "  - path: [/zz\n",
            });
        }
    }
    text
}

/// Reloads counted so far, and those that succeeded.
fn reloads(metrics: &str) -> (f64, f64) {
    let name = "scopegate_config_reloads_total";
    (
        metric(metrics, name, &[]),
        metric(metrics, name, &[("result", "success")]),
    )
}

async fn check(world: &World, case: Case) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    kubelet_write(
        dir.path(),
        1,
        &text(world, &Update::Map(case.first.clone()), 1),
    );
    let gw = start_reloading(dir.path().join("scopegate.yaml"))
        .await
        .gateway;
    let mut serving = case.first;
    let mut successes = 0.0;
    for (n, step) in case.steps.into_iter().enumerate() {
        let revision = u32::try_from(n).map_err(|e| e.to_string())? + 2;
        kubelet_write(dir.path(), revision, &text(world, &step.update, revision));
        let counted = f64::from(revision - 1);
        // Longer than the watch's fallback poll (30 s), should a file event
        // be missed.
        let mut seen = false;
        for _ in 0..4 {
            if wait_for_metrics(&gw, |m| reloads(m).0 >= counted).await {
                seen = true;
                break;
            }
        }
        if !seen {
            return Err(format!("update {n} was never counted"));
        }
        let (total, succeeded) = reloads(&gw.metrics().await);
        if let Update::Map(map) = step.update {
            successes += 1.0;
            serving = map;
        }
        if (total, succeeded) != (counted, successes) {
            return Err(format!(
                "update {n}: {total} reloads, {succeeded} of them applied; want {counted}, {successes}"
            ));
        }
        for (k, req) in step.requests.iter().enumerate() {
            route_maps::judge(world, &gw, &serving, req)
                .await
                .map_err(|e| format!("update {n}, request {k}: {e}"))?;
        }
    }
    Ok(())
}

#[test]
fn generated_config_updates_replace_the_map_whole_or_not_at_all() {
    let runtime = runtime();
    let world = runtime.block_on(World::new());
    run_campaign(&runtime, &world, 24, case(), async |world, case| {
        check(world, case).await
    });
}
