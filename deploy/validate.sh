#!/usr/bin/env bash
# Render and validate scopegate's Kubernetes manifests.
#
#   deploy/validate.sh                          # render + validate every kustomization
#   SCOPEGATE_BIN=target/release/scopegate deploy/validate.sh
#                                               # ... and `scopegate inject` each sample
#
# For every kustomization (deploy/kubernetes/base and each
# deploy/kubernetes/overlays/<name>) it:
#   1. renders it with `kubectl kustomize` to target/k8s-rendered/<name>.yaml
#      (`base` for the base);
#   2. validates every object against the Kubernetes OpenAPI schemas with
#      kubernetes-validate (strict: unknown fields are errors), for each version
#      in K8S_VERSIONS;
#   3. checks what the schemas cannot: custom resources (PodMonitor,
#      PrometheusRule) are checked structurally, a PodMonitor against the pod
#      template it selects; any other kind the schemas do not know is an error,
#      and the scopegate native sidecar is wired as documented;
#   4. writes the rendered ConfigMap's `scopegate.yaml` to
#      target/k8s-rendered/<name>.scopegate.yaml, checks that every file it
#      names (`*_file` keys) is a key of a ConfigMap or Secret the sidecar
#      mounts at that file's directory, and writes those objects' files under
#      target/k8s-rendered/<name>.mounts/ with a copy of the route map pointing
#      there, target/k8s-rendered/<name>.local.yaml;
#   5. with SCOPEGATE_BIN set, runs `$SCOPEGATE_BIN check` on that copy.
#
# It runs the alert rules of components/alerts through `promtool check rules`
# and their unit tests through `promtool test rules`, and the queries of the
# components/dashboard Grafana dashboard through `promtool check rules` as
# recording rules (skipped without promtool, except under CI=true).
#
# It renders a copy of deploy/kubernetes in which the secret files an overlay
# keeps out of git (overlays/authorization-server: signing-es256.pem,
# redis-password, redis-ca.pem) are throwaway stand-ins made with openssl,
# whether or not real ones are there: real keys never reach target/.
#
# With SCOPEGATE_BIN set, it also runs `$SCOPEGATE_BIN inject -f <sample>` for
# each deploy/inject-samples/*.yaml into target/k8s-rendered/inject/<sample>,
# validates the output the same way, checks every pod template got the sidecar,
# and checks that injecting the output again changes nothing.
#
# Environment:
#   KUBECTL        kubectl to use (default: kubectl on PATH)
#   PYTHON         python3 to use (default: python3 on PATH)
#   K8S_VERSIONS   space-separated Kubernetes versions to validate against;
#                  `latest` means the newest schema kubernetes-validate ships.
#                  Default: "1.30.0 latest". 1.30 is the oldest supported: native
#                  sidecars are on by default from 1.29, preStop `sleep` from 1.30.
#   SCOPEGATE_BIN  optional scopegate binary for `check` and the inject step.
#
# Exits non-zero, naming what failed, on any failure.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd -- "$here/.." && pwd)"
k8s_dir="$root/deploy/kubernetes"
samples_dir="$root/deploy/inject-samples"
out="$root/target/k8s-rendered"

KUBECTL="${KUBECTL:-kubectl}"
PYTHON="${PYTHON:-python3}"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 latest}"

step="starting"
failed_reported=0
work=""
fail() {
    echo "validate.sh: FAILED ($step): $*" >&2
    failed_reported=1
    exit 1
}
on_exit() {
    local rc=$?
    if [ -n "$work" ]; then rm -rf "$work"; fi
    if [ "$rc" -ne 0 ] && [ "$failed_reported" -eq 0 ]; then
        echo "validate.sh: FAILED during: $step (exit $rc)" >&2
    fi
}
trap on_exit EXIT

# --- tools -------------------------------------------------------------------
step="checking tools"
command -v "$KUBECTL" >/dev/null 2>&1 ||
    fail "kubectl not found (set KUBECTL=/path/to/kubectl); it is needed for 'kubectl kustomize'"
command -v "$PYTHON" >/dev/null 2>&1 || fail "python3 not found (set PYTHON=/path/to/python3)"
command -v openssl >/dev/null 2>&1 || fail "openssl not found; it makes the stand-in keys"
if [ -n "${SCOPEGATE_BIN:-}" ] && [ ! -x "$SCOPEGATE_BIN" ]; then
    fail "SCOPEGATE_BIN=$SCOPEGATE_BIN is not an executable"
fi

step="installing kubernetes-validate"
if ! "$PYTHON" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
    echo "==> installing kubernetes-validate from PyPI"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check kubernetes-validate ||
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --user --break-system-packages kubernetes-validate ||
        fail "could not install kubernetes-validate (pip install kubernetes-validate)"
fi
kv_version="$("$PYTHON" -c 'import kubernetes_validate; print(kubernetes_validate.__version__)')"
kv_latest="$("$PYTHON" -c 'import kubernetes_validate; print(kubernetes_validate.latest_version())')"

versions=()
for v in $K8S_VERSIONS; do
    if [ "$v" = latest ]; then v="$kv_latest"; fi
    versions+=("$v")
done
kv_args=(--strict --quiet --no-warn)
for v in "${versions[@]}"; do kv_args+=(-k "$v"); done
echo "==> kubernetes-validate $kv_version, Kubernetes ${versions[*]}, strict"

mkdir -p "$out"

# --- helpers -----------------------------------------------------------------

# schema_validate FILE: kubernetes-validate, strict, every version. Objects of
# kinds it has no schema for (CRDs such as PodMonitor) are skipped by it with a
# warning, which --no-warn hides: `checks` fails on any such kind except the
# known CRDs, which it checks itself.
schema_validate() {
    local file="$1"
    "$PYTHON" -m kubernetes_validate "${kv_args[@]}" "$file" ||
        fail "kubernetes-validate rejected $file (see the errors above)"
}

# checks MODE FILE [EXTRACT_TO]: what the schemas cannot check.
#   MODE=kustomize: exactly one scopegate sidecar; PodMonitors match the pod
#                   template; the ConfigMap's scopegate.yaml goes to EXTRACT_TO
#                   (<name>.scopegate.yaml); every file it names is mounted;
#                   the mounted files go to <name>.mounts/, the route map
#                   pointing there to <name>.local.yaml.
#   MODE=inject:    every pod template got the scopegate sidecar.
checks() {
    "$PYTHON" - "$@" <<'PY'
import base64
import os
import shutil
import sys

import kubernetes_validate
import yaml

mode, path = sys.argv[1], sys.argv[2]
extract_to = sys.argv[3] if len(sys.argv) > 3 else None
versions = sys.argv[4].split() if len(sys.argv) > 4 else [kubernetes_validate.latest_version()]
errors = []


def err(msg):
    errors.append(msg)


def kn(doc):
    return "%s/%s" % (doc.get("kind"), (doc.get("metadata") or {}).get("name"))


with open(path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d is not None]
if not docs:
    err("no objects in %s" % path)


def flatten(docs):
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List":
            yield from flatten(d.get("items") or [])
        else:
            yield d


docs = list(flatten(docs))
KNOWN_CRDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

# 1. Kinds with no schema: known CRDs are checked below, anything else fails.
for d in docs:
    if not isinstance(d, dict):
        err("document is not a mapping: %r" % (d,))
        continue
    try:
        kubernetes_validate.validate(d, versions[-1], strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        if (d.get("apiVersion"), d.get("kind")) in KNOWN_CRDS:
            print("    %s: custom resource, checked below instead of by schema" % kn(d))
        else:
            err("%s: unknown kind %s/%s (no schema, not a known CRD)"
                % (kn(d), d.get("apiVersion"), d.get("kind")))
    except kubernetes_validate.ValidationError:
        pass  # already reported by the kubernetes-validate run

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def pod_template(d):
    """(labels, podspec) of a workload or Pod."""
    kind = d.get("kind")
    spec = d.get("spec") or {}
    if kind == "Pod":
        return (d.get("metadata") or {}).get("labels") or {}, spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    tpl = spec.get("template") or {}
    return (tpl.get("metadata") or {}).get("labels") or {}, tpl.get("spec") or {}


def check_sidecar(d, ps):
    inits = ps.get("initContainers") or []
    sg = [c for c in inits if c.get("name") == "scopegate"]
    if len(sg) != 1:
        err("%s: expected exactly one scopegate init container, found %d" % (kn(d), len(sg)))
        return None
    c = sg[0]
    if inits[0].get("name") != "scopegate":
        err("%s: scopegate must be the first init container" % kn(d))
    if c.get("restartPolicy") != "Always":
        err("%s: scopegate init container needs restartPolicy: Always (native sidecar)" % kn(d))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in c:
            err("%s: scopegate has no %s" % (kn(d), probe))
    sc = c.get("securityContext") or {}
    want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for k, v in want.items():
        if sc.get(k) != v:
            err("%s: scopegate securityContext.%s must be %r" % (kn(d), k, v))
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
        err("%s: scopegate must drop ALL capabilities" % kn(d))
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
    m = mounts.get("/etc/scopegate")
    if m is None:
        err("%s: scopegate has no volume mount at /etc/scopegate" % kn(d))
    else:
        if "subPath" in m or "subPathExpr" in m:
            err("%s: /etc/scopegate must be a directory mount (subPath breaks hot reload)" % kn(d))
        vols = {v.get("name"): v for v in ps.get("volumes") or []}
        if "configMap" not in (vols.get(m.get("name")) or {}):
            err("%s: volume %r for /etc/scopegate is not a ConfigMap volume" % (kn(d), m.get("name")))
    return c


workloads = [d for d in docs if isinstance(d, dict) and d.get("kind") in POD_KINDS]

if mode == "kustomize":
    sidecars = []
    for d in workloads:
        labels, ps = pod_template(d)
        c = check_sidecar(d, ps)
        if c is not None:
            sidecars.append((d, labels, ps, c))
    if len(sidecars) != 1:
        err("expected exactly one workload with the scopegate sidecar, found %d" % len(sidecars))

    # Names the pod references must exist in the rendered output (generators
    # add hash suffixes; kustomize must have rewritten the references).
    names = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in docs if isinstance(d, dict)}
    for d, _labels, ps, _c in sidecars:
        for v in ps.get("volumes") or []:
            if "configMap" in v and ("ConfigMap", v["configMap"].get("name")) not in names:
                err("%s: volume %s references missing ConfigMap %s" % (kn(d), v.get("name"), v["configMap"].get("name")))
            if "secret" in v and ("Secret", v["secret"].get("secretName")) not in names:
                err("%s: volume %s references missing Secret %s" % (kn(d), v.get("name"), v["secret"].get("secretName")))

    # PodMonitor: structure, selector matches the pod template, port exists.
    for pm in (d for d in docs if isinstance(d, dict) and d.get("kind") == "PodMonitor"):
        spec = pm.get("spec") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        eps = spec.get("podMetricsEndpoints") or []
        if not (pm.get("metadata") or {}).get("name"):
            err("PodMonitor without metadata.name")
        if not sel:
            err("%s: spec.selector.matchLabels is empty" % kn(pm))
        if not eps:
            err("%s: spec.podMetricsEndpoints is empty" % kn(pm))
        matched = [(d, labels, ps) for d, labels, ps, _c in sidecars
                   if all(labels.get(k) == v for k, v in sel.items())]
        if not matched:
            err("%s: selector %r matches no scopegate pod template" % (kn(pm), sel))
        for ep in eps:
            if ep.get("path", "/metrics") != "/metrics":
                err("%s: endpoint path must be /metrics" % kn(pm))
            for d, _labels, ps in matched:
                ports = {p.get("name") for c in (ps.get("containers") or []) + (ps.get("initContainers") or [])
                         for p in c.get("ports") or []}
                if ep.get("port") not in ports:
                    err("%s: port %r is not a container port of %s" % (kn(pm), ep.get("port"), kn(d)))

    # PrometheusRule: structure (promtool checks the expressions, section 3).
    for pr in (d for d in docs if isinstance(d, dict) and d.get("kind") == "PrometheusRule"):
        if not (pr.get("metadata") or {}).get("name"):
            err("PrometheusRule without metadata.name")
        groups = (pr.get("spec") or {}).get("groups") or []
        if not groups:
            err("%s: spec.groups is empty" % kn(pr))
        for g in groups:
            rules = g.get("rules") or []
            if not g.get("name") or not rules:
                err("%s: a group without a name or rules" % kn(pr))
            for r in rules:
                what = r.get("alert") or r.get("record")
                if not what or not str(r.get("expr") or "").strip():
                    err("%s: a rule without alert (or record) and expr" % kn(pr))
                if r.get("alert") and not ((r.get("labels") or {}).get("severity")
                                           and (r.get("annotations") or {}).get("summary")
                                           and (r.get("annotations") or {}).get("description")):
                    err("%s: alert %s needs labels.severity, annotations.summary and description" % (kn(pr), what))

    # Extract the route map for `scopegate check`.
    cms = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ConfigMap"
           and "scopegate.yaml" in (d.get("data") or {})]
    if len(cms) != 1:
        err("expected exactly one ConfigMap with a scopegate.yaml key, found %d" % len(cms))
    else:
        text = cms[0]["data"]["scopegate.yaml"]
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            err("%s: scopegate.yaml is not valid YAML: %s" % (kn(cms[0]), e))
            cfg = None
        # Which keys it may and must have is `scopegate check`'s to say (on
        # the extracted file): a list kept here would refuse what the schema
        # allows (route_matching, resource, authorization_server).
        if not isinstance(cfg, dict):
            err("%s: scopegate.yaml is not a mapping" % kn(cms[0]))
        if extract_to:
            with open(extract_to, "w") as f:
                f.write(text)
        # Every file the route map names must be a key of a ConfigMap or
        # Secret the sidecar mounts at that file's directory.
        mounted = {}
        for d, _labels, ps, c in sidecars:
            vols = {v.get("name"): v for v in ps.get("volumes") or []}
            for m in c.get("volumeMounts") or []:
                v = vols.get(m.get("name")) or {}
                if "secret" in v:
                    kind, name = "Secret", v["secret"].get("secretName")
                elif "configMap" in v:
                    kind, name = "ConfigMap", v["configMap"].get("name")
                else:
                    continue
                objs = [o for o in docs if isinstance(o, dict) and o.get("kind") == kind
                        and (o.get("metadata") or {}).get("name") == name]
                files = {}
                for o in objs:
                    for k, val in (o.get("data") or {}).items():
                        files[k] = base64.b64decode(val) if kind == "Secret" else val.encode()
                    for k, val in (o.get("stringData") or {}).items():
                        files[k] = val.encode()
                mounted[m.get("mountPath")] = files

        def named_files(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if isinstance(v, str) and k.endswith("_file"):
                        yield v
                    else:
                        yield from named_files(v)
            elif isinstance(node, list):
                for v in node:
                    yield from named_files(v)

        for f in named_files(cfg if isinstance(cfg, dict) else {}):
            parent, key = os.path.split(f)
            if key not in mounted.get(parent, {}):
                err("%s: %s is not a file the scopegate sidecar mounts (no ConfigMap or Secret key %r mounted at %s)"
                    % (kn(cms[0]), f, key, parent))
        if extract_to:
            base = extract_to[: -len(".scopegate.yaml")]
            mounts_dir = base + ".mounts"
            shutil.rmtree(mounts_dir, ignore_errors=True)
            local = text
            for i, (at, files) in enumerate(sorted(mounted.items())):
                stand_in = os.path.join(mounts_dir, str(i))
                os.makedirs(stand_in)
                for k, val in files.items():
                    with open(os.path.join(stand_in, k), "wb") as f:
                        f.write(val)
                local = local.replace(at.rstrip("/") + "/", stand_in + "/")
            with open(base + ".local.yaml", "w") as f:
                f.write(local)

elif mode == "inject":
    if not workloads:
        err("no workloads in %s" % path)
    for d in workloads:
        _labels, ps = pod_template(d)
        check_sidecar(d, ps)
else:
    err("unknown mode %s" % mode)

if errors:
    for e in errors:
        print("  ERROR %s: %s" % (path, e), file=sys.stderr)
    sys.exit(1)
PY
}

# --- 1. kustomizations -------------------------------------------------------
# A copy, with stand-ins for the secret files kept out of git.
step="copying deploy/kubernetes"
work="$(mktemp -d)"
cp -R "$k8s_dir" "$work/kubernetes"
k8s_copy="$work/kubernetes"
stand_ins="$k8s_copy/overlays/authorization-server"
if [ -d "$stand_ins" ]; then
    step="making stand-in secret files"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$stand_ins/signing-es256.pem" 2>/dev/null || fail "openssl genpkey failed"
    openssl rand -hex 32 >"$stand_ins/redis-password" || fail "openssl rand failed"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj /CN=stand-in-redis-ca -days 1 -keyout /dev/null \
        -out "$stand_ins/redis-ca.pem" 2>/dev/null || fail "openssl req failed"
fi

targets=("base:$k8s_copy/base")
for d in "$k8s_copy"/overlays/*/; do
    [ -f "$d/kustomization.yaml" ] || continue
    name="$(basename "$d")"
    targets+=("$name:${d%/}")
done

for t in "${targets[@]}"; do
    name="${t%%:*}"
    dir="${t#*:}"
    rendered="$out/$name.yaml"
    step="rendering $name ($dir)"
    echo "==> $name: kubectl kustomize ${dir#"$k8s_copy"/}"
    "$KUBECTL" kustomize "$dir" >"$rendered" || fail "kubectl kustomize $dir failed"
    step="validating $name"
    schema_validate "$rendered"
    step="checking $name"
    checks kustomize "$rendered" "$out/$name.scopegate.yaml" "${versions[*]}" ||
        fail "checks failed for $rendered"
    if [ -n "${SCOPEGATE_BIN:-}" ]; then
        step="scopegate check $name"
        "$SCOPEGATE_BIN" check --config "$out/$name.local.yaml" >/dev/null ||
            fail "'$SCOPEGATE_BIN check --config $out/$name.local.yaml' failed"
    fi
    echo "    ok: ${rendered#"$root"/}, ${out#"$root"/}/$name.scopegate.yaml"
done

# --- 2. alert rules ----------------------------------------------------------
# The PrometheusRule component's groups, as a Prometheus rule file, through
# `promtool check rules` and its unit tests (`promtool test rules`); the
# dashboard's queries through `promtool check rules` as well. Without
# promtool (Debian's `prometheus` package) this is skipped, except in CI.
alerts_dir="$k8s_dir/components/alerts"
if [ -f "$alerts_dir/prometheusrule.yaml" ]; then
    if command -v promtool >/dev/null; then
        step="promtool on the alert rules"
        echo "==> alerts: promtool check rules, promtool test rules"
        rules_out="$out/alerts"
        rm -rf "$rules_out"
        mkdir -p "$rules_out"
        "$PYTHON" - "$alerts_dir/prometheusrule.yaml" "$rules_out/scopegate.rules.yaml" <<'PY' ||
import sys

import yaml

with open(sys.argv[1]) as f:
    spec = yaml.safe_load(f)["spec"]
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(spec, f, sort_keys=False, width=1000)
PY
            fail "cannot extract the rule groups of $alerts_dir/prometheusrule.yaml"
        cp "$alerts_dir/rules.test.yaml" "$rules_out/"
        promtool check rules "$rules_out/scopegate.rules.yaml" ||
            fail "promtool check rules failed on $rules_out/scopegate.rules.yaml"
        # The dashboard's queries, as recording rules (its variables given
        # values), so that promtool parses them too.
        dashboard="$k8s_dir/components/dashboard/scopegate.json"
        if [ -f "$dashboard" ]; then
            "$PYTHON" - "$dashboard" "$rules_out/dashboard.rules.yaml" <<'PY' ||
import json
import sys

import yaml

with open(sys.argv[1]) as f:
    dashboard = json.load(f)
rules = []
for panel in dashboard["panels"]:
    for target in panel.get("targets") or []:
        expr = (target["expr"].replace("$__rate_interval", "5m")
                .replace("$namespace", ".*").replace("$pod", ".*"))
        rules.append({"record": "scopegate_dashboard:query%d" % len(rules), "expr": expr})
with open(sys.argv[2], "w") as f:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, width=1000)
PY
                fail "cannot read the queries of $dashboard"
            promtool check rules "$rules_out/dashboard.rules.yaml" ||
                fail "promtool cannot parse a query of $dashboard (as $rules_out/dashboard.rules.yaml)"
        fi
        (cd "$rules_out" && promtool test rules rules.test.yaml) ||
            fail "promtool test rules failed ($alerts_dir/rules.test.yaml)"
        echo "    ok: ${rules_out#"$root"/}"
    elif [ "${CI:-}" = true ]; then
        fail "promtool is not installed (Debian package prometheus); CI must check the alert rules"
    else
        echo "==> alerts skipped (no promtool; Debian's prometheus package has it)"
    fi
fi

# --- 3. optional: scopegate inject on the samples ----------------------------
if [ -n "${SCOPEGATE_BIN:-}" ]; then
    mkdir -p "$out/inject"
    found=0
    for sample in "$samples_dir"/*.yaml; do
        [ -f "$sample" ] || continue
        found=1
        base="$(basename "$sample")"
        injected="$out/inject/$base"
        step="injecting $base"
        echo "==> inject: ${sample#"$root"/}"
        "$SCOPEGATE_BIN" inject -f "$sample" >"$injected" ||
            fail "'$SCOPEGATE_BIN inject -f $sample' failed"
        step="validating injected $base"
        schema_validate "$injected"
        checks inject "$injected" "" "${versions[*]}" || fail "checks failed for injected $base"
        step="re-injecting $base"
        "$SCOPEGATE_BIN" inject -f - <"$injected" >"$injected.again" ||
            fail "'$SCOPEGATE_BIN inject -f -' failed on its own output for $base"
        cmp -s "$injected" "$injected.again" ||
            fail "inject is not idempotent for $base: diff $injected $injected.again"
        rm -f "$injected.again"
        echo "    ok: ${injected#"$root"/}"
    done
    [ "$found" -eq 1 ] || fail "no samples in $samples_dir"
else
    echo "==> inject samples skipped (set SCOPEGATE_BIN to a scopegate binary to check them)"
fi

step="done"
echo "validate.sh: all manifests valid"
