//! Kubernetes packaging: every kustomization renders, its ConfigMap's route map
//! passes `scopegate check`, and `scopegate inject` is idempotent on the samples
//! and keeps generated hostile manifests' meaning for a YAML 1.1 reader
//! (`hostile_manifests`).
//! (Schema validation of the rendered objects runs in `deploy/validate.sh`.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `probe` (a command that only checks for a tool) succeeds; where
/// it does not, the caller skips, except in CI, which must have `what`.
fn available(what: &str, probe: &mut Command) -> bool {
    let found = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        support::skip_unless_ci(&format!("{what} is not installed"));
    }
    found
}

fn kubectl_available() -> bool {
    available(
        "kubectl",
        Command::new("kubectl").args(["version", "--client"]),
    )
}

/// The `scopegate.yaml` entries of every ConfigMap in a rendered stream.
fn configmap_route_maps(rendered: &str) -> Vec<String> {
    let mut maps = Vec::new();
    for doc in rendered.split("\n---\n") {
        let value: serde_json::Value = match serde_saphyr::from_str(doc) {
            Ok(v) => v,
            Err(e) => panic!("rendered YAML does not parse: {e}\n{doc}"),
        };
        if value["kind"] == "ConfigMap" {
            if let Some(text) = value["data"]["scopegate.yaml"].as_str() {
                maps.push(text.to_owned());
            }
        }
    }
    maps
}

#[test]
fn every_kustomization_renders_and_its_route_map_passes_check() {
    if !kubectl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("introspection-client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let targets = ["base", "overlays/jwt", "overlays/introspection"];
    for target in targets {
        let out = Command::new("kubectl")
            .args(["kustomize"])
            .arg(root().join("deploy/kubernetes").join(target))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).unwrap();
        assert!(
            rendered.contains("restartPolicy: Always"),
            "{target}: native sidecar missing"
        );
        let maps = configmap_route_maps(&rendered);
        assert_eq!(maps.len(), 1, "{target}: one route map ConfigMap expected");
        let text = maps[0].replace(
            "/var/run/secrets/scopegate/introspection-client-secret",
            secret.to_str().unwrap(),
        );
        let file = dir
            .path()
            .join(format!("{}.yaml", target.replace('/', "-")));
        std::fs::write(&file, text).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

/// Runs `scopegate inject -f -` on `input`, its output going to `stdout`.
fn run_inject(input: &[u8], stdout: Stdio) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn inject(input: &[u8]) -> Vec<u8> {
    let out = run_inject(input, Stdio::piped());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn inject_adds_the_sidecar_once_to_every_sample() {
    let samples = root().join("deploy/inject-samples");
    let mut count = 0;
    for entry in std::fs::read_dir(samples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        count += 1;
        let original = std::fs::read(&path).unwrap();
        let once = inject(&original);
        let text = String::from_utf8(once.clone()).unwrap();
        // Every pod template of every workload: the sidecar first among its
        // init containers, restarted as a sidecar is.
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let mut pods = 0;
        for doc in &docs {
            let pod = match doc["kind"].as_str() {
                Some("Pod") => &doc["spec"],
                Some("Deployment" | "StatefulSet" | "DaemonSet" | "Job") => {
                    &doc["spec"]["template"]["spec"]
                }
                Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => continue,
            };
            pods += 1;
            let sidecar = &pod["initContainers"][0];
            assert_eq!(sidecar["name"], "scopegate", "{}: {pod}", path.display());
            assert_eq!(sidecar["restartPolicy"], "Always", "{}", path.display());
        }
        assert!(pods >= 1, "{}: no workload", path.display());
        let twice = inject(&once);
        assert_eq!(once, twice, "{}: inject is not idempotent", path.display());
    }
    assert!(count >= 4, "samples missing");
}

#[test]
fn inject_reports_bad_yaml_with_a_location() {
    let out = run_inject(
        b"apiVersion: v1\nkind: Pod\nspec: [unclosed\n",
        Stdio::piped(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line"), "{stderr}");
}

/// kubectl reads a plain `yes`, `on` or `Y` as true (go-yaml v2, YAML 1.1):
/// a pod with `hostNetwork: yes` is a host-network pod, refused as one with
/// `true` is.
#[test]
fn inject_refuses_host_network_written_as_a_yaml_1_1_boolean() {
    for spelling in ["yes", "on", "Y", "True"] {
        let daemon_set = format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent}}\nspec:\n  \
             selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: \
             {{app: agent}}}}\n    spec:\n      hostNetwork: {spelling}\n      containers:\n        \
             - {{name: agent, image: agent:1}}\n"
        );
        let out = run_inject(daemon_set.as_bytes(), Stdio::piped());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "hostNetwork: {spelling}: {stderr}"
        );
        assert!(stderr.contains("hostNetwork"), "{spelling}: {stderr}");
    }
}

/// A free-form value (a HelmRelease's `values`) written as a YAML 1.1
/// boolean keeps that meaning for kubectl: `enabled: no` stays false, not
/// the string "no" (which Helm's templates take for true). A spelling
/// go-yaml v2 keeps as a string (`oN`) stays one.
#[test]
fn inject_keeps_yaml_1_1_booleans_of_other_kinds() {
    let Some(mut reader) = hostile_manifests::Reader::start() else {
        return;
    };
    let release = "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: \
                   {name: web}\nspec:\n  values:\n    ingress:\n      enabled: no\n      \
                   tls: On\n      mode: oN\n      quoted: \"no\"\n";
    let out = String::from_utf8(inject(release.as_bytes())).unwrap();
    let docs = reader.read(&out).unwrap();
    assert_eq!(docs.len(), 1, "{out}");
    assert_eq!(
        docs[0]["spec"]["values"]["ingress"],
        serde_json::json!({ "enabled": false, "tls": true, "mode": "oN", "quoted": "no" }),
        "{out}"
    );
}

/// A pod's own grace period shorter than the drain the sidecar needs (60 s;
/// every live object from `kubectl get` carries the API's 30) is kept, and
/// said on stderr, naming the object; one long enough, or none, is not.
#[test]
fn inject_warns_of_a_grace_period_shorter_than_the_drain() {
    let deployment = |grace: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  \
             selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: \
             {{app: web}}}}\n    spec:\n{grace}      containers:\n        \
             - {{name: app, image: app:1}}\n"
        )
    };
    let out = run_inject(
        deployment("      terminationGracePeriodSeconds: 30\n").as_bytes(),
        Stdio::piped(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("-: warning: document 1 (Deployment/web): ")
            && stderr.contains("`spec.template.spec.terminationGracePeriodSeconds` is 30")
            && stderr.contains("60"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let spec = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(spec["terminationGracePeriodSeconds"], 30, "kept");
    assert_eq!(spec["initContainers"][0]["name"], "scopegate");
    for grace in ["      terminationGracePeriodSeconds: 90\n", ""] {
        let out = run_inject(deployment(grace).as_bytes(), Stdio::piped());
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{grace:?}");
    }
}

/// A manifest that cannot be written out in full (here to a full disk) is a
/// failure, not a success that leaves a cut-off file to `kubectl apply`.
#[cfg(target_os = "linux")]
#[test]
fn inject_fails_when_its_output_cannot_be_written() {
    let sample = root().join("deploy/inject-samples");
    let path = std::fs::read_dir(sample)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "yaml"))
        .unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = run_inject(&std::fs::read(&path).unwrap(), Stdio::from(full));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot write the output"), "{stderr}");
}

#[path = "kubernetes/hostile_manifests.rs"]
mod hostile_manifests;
