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

/// The objects of a rendered stream.
fn documents(rendered: &str) -> Vec<serde_json::Value> {
    match serde_saphyr::from_multiple(rendered) {
        Ok(docs) => docs,
        Err(e) => panic!("rendered YAML does not parse: {e}\n{rendered}"),
    }
}

/// The `scopegate.yaml` entries of every ConfigMap in a rendered stream.
fn configmap_route_maps(docs: &[serde_json::Value]) -> Vec<String> {
    docs.iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .filter_map(|d| d["data"]["scopegate.yaml"].as_str())
        .map(str::to_owned)
        .collect()
}

/// A mounted object's files: name and contents.
type Files = Vec<(String, Vec<u8>)>;

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every string the config gives under a key ending in `_file`.
fn config_files(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v.as_str() {
                    Some(path) if key.ends_with("_file") => out.push(path.to_owned()),
                    _ => config_files(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| config_files(v, out)),
        _ => {}
    }
}

/// The secret files an overlay keeps out of git, made fresh here as a
/// deployer would (deploy/README.md §3).
fn make_deploy_time_secrets(overlay: &Path) {
    std::fs::write(overlay.join("signing-es256.pem"), support::p256_pem()).unwrap();
    std::fs::write(overlay.join("redis-password"), "a-redis-password").unwrap();
    let ca = tempfile::tempdir().unwrap();
    let (cert, _key) = support::self_signed(ca.path());
    std::fs::copy(cert, overlay.join("redis-ca.pem")).unwrap();
}

/// Renders every kustomization (from a copy of deploy/kubernetes, where the
/// secret files kept out of git are made first), checks that every file the
/// route map names is a key of a ConfigMap or Secret the sidecar mounts at
/// that file's directory, and runs `scopegate check` on the route map with
/// those mounts stood in for by the rendered objects' contents.
#[test]
fn every_kustomization_renders_and_its_route_map_passes_check() {
    if !kubectl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("kubernetes");
    copy_tree(&root().join("deploy/kubernetes"), &tree);
    make_deploy_time_secrets(&tree.join("overlays/authorization-server"));
    let targets = [
        "base",
        "overlays/jwt",
        "overlays/introspection",
        "overlays/authorization-server",
    ];
    for target in targets {
        let out = Command::new("kubectl")
            .args(["kustomize"])
            .arg(tree.join(target))
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
        let docs = documents(&rendered);
        let maps = configmap_route_maps(&docs);
        assert_eq!(maps.len(), 1, "{target}: one route map ConfigMap expected");
        let mut text = maps[0].clone();

        // What the sidecar mounts: mount path -> the object's files.
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let sidecar = pod["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "scopegate")
            .unwrap();
        let volumes = pod["volumes"].as_array().unwrap();
        let mut mounted: Vec<(String, Files)> = Vec::new();
        for mount in sidecar["volumeMounts"].as_array().unwrap() {
            let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
            let (kind, name) = if let Some(name) = volume["secret"]["secretName"].as_str() {
                ("Secret", name)
            } else if let Some(name) = volume["configMap"]["name"].as_str() {
                ("ConfigMap", name)
            } else {
                continue;
            };
            let object = docs
                .iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{target}: no {kind} {name}"));
            let files = object["data"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(key, value)| {
                    let value = value.as_str().unwrap();
                    let bytes = if kind == "Secret" {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(value.replace('\n', ""))
                            .unwrap()
                    } else {
                        value.as_bytes().to_vec()
                    };
                    (key.clone(), bytes)
                })
                .collect();
            mounted.push((mount["mountPath"].as_str().unwrap().to_owned(), files));
        }

        // Every file the config names is in a mounted object, under the
        // directory the config names.
        let config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let mut named = Vec::new();
        config_files(&config, &mut named);
        for file in &named {
            let path = Path::new(file);
            let parent = path.parent().unwrap().to_str().unwrap();
            let key = path.file_name().unwrap().to_str().unwrap();
            let found = mounted
                .iter()
                .any(|(at, files)| at == parent && files.iter().any(|(k, _)| k == key));
            assert!(found, "{target}: {file} is not a file the sidecar mounts");
        }
        if target == "overlays/authorization-server" {
            let key = config["authorization_server"]["signing_keys"][0]["private_key_file"]
                .as_str()
                .unwrap();
            assert!(named.iter().any(|f| f == key));
            // Shared by the replicas, not each pod's own.
            assert!(config["authorization_server"]["store"]["redis"].is_string());
        }

        // The mounts stood in for by local directories with their files.
        let local = dir.path().join(target.replace('/', "-"));
        for (index, (at, files)) in mounted.iter().enumerate() {
            let stand_in = local.join(index.to_string());
            std::fs::create_dir_all(&stand_in).unwrap();
            for (key, bytes) in files {
                std::fs::write(stand_in.join(key), bytes).unwrap();
            }
            text = text.replace(&format!("{at}/"), &format!("{}/", stand_in.display()));
        }
        let file = local.join("scopegate.yaml");
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

/// A container port of the proxy or admin port's number but for another
/// protocol (UDP, SCTP) is no conflict: TCP and UDP ports are separate
/// spaces in the pod's network namespace, so a UDP listener on 9090 (a
/// statsd / DNS-style sidecar) never clashes with scopegate's TCP admin
/// listener, and Kubernetes allows one port number under two protocols.
/// deploy/README.md refuses only ports "they would clash" on.
#[test]
fn inject_does_not_refuse_a_udp_port_with_the_admin_ports_number() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - \
                name: metrics-agent\n      image: a\n      ports:\n        - {containerPort: \
                9090, protocol: UDP}\n        - {containerPort: 8080, protocol: SCTP}\n";
    let out = scopegate::inject::inject(yaml, &scopegate::inject::InjectOptions::default());
    assert!(
        out.as_ref().is_ok_and(|o| o.contains("scopegate-admin")),
        "a UDP/SCTP port cannot clash with the sidecar's TCP listeners: {out:?}"
    );
    // The same port over TCP, said or by default, still does.
    for protocol in ["", ", protocol: TCP"] {
        let tcp = yaml.replace(", protocol: SCTP", protocol);
        let out = scopegate::inject::inject(&tcp, &scopegate::inject::InjectOptions::default());
        assert!(
            matches!(
                out,
                Err(scopegate::inject::InjectError::PortConflict { port: 8080, .. })
            ),
            "{protocol}: {out:?}"
        );
    }
}

/// A port written `8080.0` (or `!!float 8080`), which kubectl's
/// YAML-to-JSON conversion sends as the integer 8080, conflicts as 8080
/// does (the README: it refuses manifests where an existing container
/// already declares the proxy or admin port); one that is no port number
/// at all (`8080.5`) is refused, naming it.
#[test]
fn inject_sees_a_conflicting_port_written_as_a_float() {
    for port in ["8080.0", "!!float 8080", "8.08e3"] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n    - \
             name: app\n      image: a\n      ports: [{{containerPort: {port}}}]\n"
        );
        let out = scopegate::inject::inject(&yaml, &scopegate::inject::InjectOptions::default());
        assert!(
            matches!(
                out,
                Err(scopegate::inject::InjectError::PortConflict { port: 8080, .. })
            ),
            "containerPort {port} is port 8080 to kubectl: {out:?}"
        );
    }
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - \
                name: app\n      image: a\n      ports: [{containerPort: 8080.5}]\n";
    let out = run_inject(yaml.as_bytes(), Stdio::piped());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("document 1 (Pod/p): `spec.containers[0].ports[0].containerPort`")
            && stderr.contains("8080.5, not a port number"),
        "{stderr}"
    );
}

/// A plain mapping key that YAML 1.1 (kubectl's go-yaml v2) reads as a
/// boolean, a number or null (`y`, `0644`, `0x10`, `1_000`, `~`) is one
/// kubectl applies as other text (`"true"`, `"420"`, `"16"`, `"1000"`;
/// sigs.k8s.io/yaml's key conversion) or refuses; `inject`, which writes
/// every key quoted, would turn it back into the text written, so a
/// ConfigMap or custom resource it should pass through unchanged would be
/// applied with other keys than without it. Such a key is refused, with
/// its document, line and column and the advice to quote it; quoted ones,
/// and plain ones kubectl keeps as written (`80`, `true`), pass and read
/// as kubectl reads the input.
#[test]
fn inject_keeps_what_kubectl_reads_for_plain_non_string_keys() {
    let config_map = |keys: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  x: a\n{keys}")
    };
    let opts = scopegate::inject::InjectOptions::default();
    for (key, reads_as) in [
        ("y", "the boolean true"),
        ("On", "the boolean true"),
        ("n", "the boolean false"),
        ("0644", "the number 420"),
        ("0x10", "the number 16"),
        ("1_000", "the number 1000"),
        ("~", "null"),
        ("1e3", "a floating-point number"),
    ] {
        let yaml = format!(
            "kind: Service\n---\n{}",
            config_map(&format!("  {key}: b\n"))
        );
        let out = scopegate::inject::inject(&yaml, &opts);
        match &out {
            Err(scopegate::inject::InjectError::AmbiguousKey {
                document: 2,
                line: 8,
                column: 3,
                key: refused,
                reads_as: said,
            }) if refused == key && said.starts_with(reads_as) => {}
            _ => panic!("plain key {key} is {reads_as} to kubectl: {out:?}"),
        }
    }
    // What the operator reads.
    let out = run_inject(config_map("  y: b\n").as_bytes(), Stdio::piped());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "-: document 1: the unquoted key \"y\" at line 6, column 3 is the boolean true"
        ) && stderr.contains("quote it"),
        "{stderr}"
    );

    let Some(mut reader) = hostile_manifests::Reader::start() else {
        return;
    };
    let kept = config_map("  \"y\": b\n  '0644': c\n  \"1_000\": d\n  80: e\n  true: f\n");
    let out = String::from_utf8(inject(kept.as_bytes())).unwrap();
    let docs = reader.read(&out).unwrap();
    assert_eq!(
        docs[0]["data"],
        serde_json::json!({
            "x": "a", "y": "b", "0644": "c", "1_000": "d", "80": "e", "true": "f"
        }),
        "what kubectl reads of the input:\n{out}"
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

/// `scopegate inject`'s warnings to a stderr it cannot write (`2>/dev/full`,
/// a log pipe whose reader has gone) are given up, not a panic (exit 101)
/// that lost the injected manifests.
#[test]
fn inject_warnings_to_an_unwritable_stderr_do_not_lose_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pod.yaml");
    // A grace period shorter than the drain: inject keeps it and warns.
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  terminationGracePeriodSeconds: 30\n  containers:\n    - name: app\n      image: app:1\n",
    )
    .unwrap();
    // Sanity: with a writable stderr the warning is given and all is well.
    let fine = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["inject", "-f", manifest.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(fine.status.code(), Some(0), "{fine:?}");
    assert!(String::from_utf8_lossy(&fine.stderr).contains("warning"));

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["inject", "-f", manifest.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(full))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "inject with an unwritable stderr: {:?}",
        out.status
    );
    assert_eq!(out.stdout, fine.stdout, "the injected manifests were lost");
}

#[path = "kubernetes/hostile_manifests.rs"]
mod hostile_manifests;
