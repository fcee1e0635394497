//! Generated manifests through `scopegate inject`, read back as kubectl's
//! YAML 1.1 reader would read them.
//!
//! Each case is a stream of documents (Deployments, Pods, CronJobs, a
//! `List`, ConfigMaps, a custom resource with a free-form `spec`), written as
//! JSON or as block YAML (in one style of it, booleans spelt `yes`, `On`,
//! `n` and so on, and strings such as `yEs` unquoted, which kubectl reads as
//! booleans and as strings), whose keys and values are the scalars that YAML
//! readers disagree on: YAML 1.1 booleans (`yes`, `on`, `y`, `yEs`), nulls (`~`),
//! octal and hexadecimal (`0644`, `0x1F`), sexagesimal (`1:20`), `1_000`,
//! `.inf`, timestamps, the merge key `<<`, indicators (`- x`, `#x`, `&a`,
//! `*a`, `!t`, `%x`, `@x`), document markers, blanks at either end, line
//! breaks, control and non-ASCII characters; and numbers, booleans and nulls
//! themselves. The reference says:
//! - every document comes out (and nothing else), and read by PyYAML
//!   (YAML 1.1) with go-yaml v2's extra booleans and floats
//!   (`tests/kubernetes/yaml11.py`), it is the document that went in, plus
//!   the sidecar, its volume and the pod annotations and nothing else: no
//!   string reads as a number, boolean, null or timestamp, and no number as
//!   a string;
//! - every pod template gets the sidecar first among its init containers;
//! - injecting the output again changes nothing.
//!
//! `SCOPEGATE_HOSTILE_CASES` sets the number of cases (default 256).

use super::*;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout};

use proptest::prelude::*;
use scopegate::inject::{
    InjectOptions, CONFIG_VOLUME, INJECT_ANNOTATION, SIDECAR_NAME, UPSTREAM_PORT_ANNOTATION,
};
use serde_json::{json, Value};

/// Scalars that YAML 1.1 and 1.2 readers, or a careless writer, may take
/// for something else than the text they are.
const TRICKY: &[&str] = &[
    "yes",
    "No",
    "ON",
    "off",
    "y",
    "N",
    "true",
    "False",
    "yEs",
    "oFF",
    "tRUE",
    "~",
    "null",
    "Null",
    "NULL",
    "",
    "0644",
    "0o17",
    "0x1F",
    "0b101",
    "1_000",
    "1:20",
    "190:20:30.15",
    "-.inf",
    ".NaN",
    "+1",
    "1e3",
    "1.",
    ".5",
    "-0",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "=",
    "<<",
    "- x",
    "-",
    "?",
    ":",
    "x: y",
    "#x",
    "x #y",
    "&a",
    "*a",
    "!t",
    "%x",
    "@x",
    "`x",
    "{a}",
    "[a]",
    "'q'",
    "\"q\"",
    "---",
    "...",
    " lead",
    "trail ",
    "two\nlines",
    "tab\there",
    "\u{7}bell",
    "caf\u{e9}",
    "\u{feff}bom",
    "next\u{85}line",
    "sep\u{2028}arator",
    "a\\b",
    "8080",
];

/// The [`TRICKY`] strings in a case no YAML 1.1 reader takes for a
/// boolean, though serde-saphyr's YAML 1.1 mode would.
const MIXED_CASE: &[&str] = &["yEs", "oFF", "tRUE"];

/// Ordinary words, for names and the like.
const WORDS: &[&str] = &["app", "web", "orders", "x", "a-b", "v1.2.3"];

fn tricky() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(TRICKY).prop_map(str::to_owned),
        1 => prop::sample::select(WORDS).prop_map(str::to_owned),
    ]
}

/// Any scalar: a tricky string mostly, and numbers, booleans and null.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => tricky().prop_map(Value::String),
        1 => prop::sample::select(vec![
            json!(0),
            json!(420),
            json!(-7),
            json!(9_007_199_254_740_993_i64),
            json!(1.5),
            json!(-0.25),
            json!(true),
            json!(false),
            Value::Null,
        ]),
    ]
}

/// A mapping of tricky keys to `value`s.
fn mapping(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(tricky(), value, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A free-form tree of scalars, mappings and sequences.
fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            mapping(inner.clone()),
            prop::collection::vec(inner, 0..4).prop_map(Value::Array),
        ]
    })
}

fn strings() -> impl Strategy<Value = Value> {
    mapping(tricky().prop_map(Value::String))
}

fn metadata() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(WORDS),
        strings(),
        prop_oneof![strings(), Just(Value::Null)],
    )
        .prop_map(|(name, labels, annotations)| {
            json!({ "name": name, "labels": labels, "annotations": annotations })
        })
}

fn container() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(WORDS),
        prop::collection::vec(tricky(), 0..4),
        prop::collection::vec((tricky(), tricky()), 0..3),
        prop::sample::select(vec![3000, 5000]),
    )
        .prop_map(|(name, args, env, port)| {
            let env: Vec<Value> = env
                .into_iter()
                .map(|(name, value)| json!({ "name": name, "value": value }))
                .collect();
            json!({
                "name": name,
                "image": "example/app:1",
                "args": args,
                "env": env,
                "ports": [{ "containerPort": port }],
            })
        })
}

fn pod_spec() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(container(), 1..3),
        prop::option::of(prop::collection::vec(container(), 0..2)),
        prop::option::of(Just(
            json!([{ "name": "data", "emptyDir": {}, "x-mode": "0644" }]),
        )),
    )
        .prop_map(|(containers, init, volumes)| {
            let mut spec = json!({ "containers": containers });
            if let Some(init) = init {
                spec["initContainers"] = Value::Array(init);
            }
            if let Some(volumes) = volumes {
                spec["volumes"] = volumes;
            }
            spec
        })
}

/// A pod template: its metadata (or none) and spec.
fn template() -> impl Strategy<Value = Value> {
    (prop::option::of(metadata()), pod_spec()).prop_map(|(metadata, spec)| match metadata {
        Some(metadata) => json!({ "metadata": metadata, "spec": spec }),
        None => json!({ "spec": spec }),
    })
}

/// One Kubernetes object.
fn object() -> impl Strategy<Value = Value> {
    prop_oneof![
        (metadata(), template(), tree()).prop_map(|(metadata, template, extra)| json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": { "replicas": 2, "template": template, "x-extra": extra },
        })),
        (metadata(), pod_spec()).prop_map(|(metadata, spec)| json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
        })),
        (metadata(), template()).prop_map(|(metadata, template)| json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": metadata,
            "spec": { "schedule": "0 * * * *", "jobTemplate": { "spec": { "template": template } } },
        })),
        (metadata(), strings()).prop_map(|(metadata, data)| json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": data,
        })),
        (metadata(), tree()).prop_map(|(metadata, spec)| json!({
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": metadata,
            "spec": spec,
        })),
    ]
}

/// A document: an object, or a `List` of them.
fn document() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => object(),
        1 => prop::collection::vec(object(), 0..3)
            .prop_map(|items| json!({ "apiVersion": "v1", "kind": "List", "items": items })),
    ]
}

/// How a document is written in the input.
#[derive(Debug, Clone, Copy)]
enum Style {
    Json,
    Block,
    /// Block, its booleans in YAML 1.1's other spellings (`yes`, `On`,
    /// `n`) and the strings that only look like them (`yEs`) unquoted:
    /// what kubectl reads as booleans and as strings.
    Yaml11,
}

fn stream() -> impl Strategy<Value = Vec<(Value, Style)>> {
    prop::collection::vec(
        (
            document(),
            prop::sample::select(vec![Style::Json, Style::Block, Style::Yaml11]),
        ),
        1..4,
    )
}

fn render(docs: &[(Value, Style)]) -> String {
    let mut out = String::from("# generated\n");
    for (doc, style) in docs {
        out.push_str("---\n");
        match style {
            Style::Json => out.push_str(&serde_json::to_string_pretty(doc).unwrap()),
            Style::Block => out.push_str(&serde_saphyr::to_string(doc).unwrap()),
            Style::Yaml11 => {
                out.push_str(&yaml11_spellings(&serde_saphyr::to_string(doc).unwrap()))
            }
        }
        out.push('\n');
    }
    out
}

/// go-yaml v2's booleans other than `true`/`false`, by value.
const YAML11_TRUE: &[&str] = &[
    "yes", "Yes", "YES", "y", "Y", "on", "On", "ON", "True", "TRUE",
];
const YAML11_FALSE: &[&str] = &[
    "no", "No", "NO", "n", "N", "off", "Off", "OFF", "False", "FALSE",
];

/// `block` with each `true`/`false` value (after `key:` or `-`, ending its
/// line) written in another YAML 1.1 spelling in turn, and each quoted
/// [`TRICKY`] string go-yaml v2 reads as a string anyway (`yEs`) unquoted.
fn yaml11_spellings(block: &str) -> String {
    let mut turn = 0;
    let mut out = String::new();
    for line in block.lines() {
        let mut rewritten = None;
        for (written, spellings) in [(" true", YAML11_TRUE), (" false", YAML11_FALSE)] {
            if let Some(head) = line.strip_suffix(written) {
                if head.ends_with(':') || head.trim_start().chars().all(|c| c == '-' || c == ' ') {
                    rewritten = Some(format!("{head} {}", spellings[turn % spellings.len()]));
                    turn += 1;
                }
            }
        }
        for text in MIXED_CASE {
            if let Some(head) = line.strip_suffix(&format!(" \"{text}\"")) {
                if head.ends_with(':') || head.trim_start().chars().all(|c| c == '-' || c == ' ') {
                    rewritten = Some(format!("{head} {text}"));
                }
            }
        }
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// `out` (the injected `input`) without what injection adds, and only
/// where it adds it: the sidecar first among each pod spec's init
/// containers, the config volume last among its volumes, the two
/// annotations in the pod's metadata, the grace period where `input` set
/// none, and the sequences, mapping and metadata made to hold them where
/// `input` had none (or null).
fn uninject(out: &mut Value, input: &Value) {
    let template = |doc: &mut Value, input: &Value, path: &[&str]| {
        let (mut out, mut input) = (Some(doc), Some(input));
        for key in path {
            out = out.and_then(|v| v.get_mut(*key));
            input = input.and_then(|v| v.get(*key));
        }
        if let (Some(out), Some(input)) = (out, input) {
            uninject_template(out, input);
        }
    };
    match input["kind"].as_str() {
        Some("List") => {
            if let (Some(out), Some(input)) =
                (out["items"].as_array_mut(), input["items"].as_array())
            {
                for (out, input) in out.iter_mut().zip(input) {
                    uninject(out, input);
                }
            }
        }
        Some("Deployment") => template(out, input, &["spec", "template"]),
        Some("CronJob") => template(out, input, &["spec", "jobTemplate", "spec", "template"]),
        Some("Pod") => uninject_template(out, input),
        _ => {}
    }
}

/// [`uninject`] for one pod template (or Pod): its `metadata` and `spec`.
fn uninject_template(out: &mut Value, input: &Value) {
    let named = |v: &Value, name: &str| v.get("name") == Some(&json!(name));
    if let Some(spec) = out.get_mut("spec") {
        if let Some(init) = spec.get_mut("initContainers").and_then(Value::as_array_mut) {
            if init.first().is_some_and(|c| named(c, SIDECAR_NAME)) {
                init.remove(0);
            }
        }
        if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
            if volumes.last().is_some_and(|v| named(v, CONFIG_VOLUME)) {
                volumes.pop();
            }
        }
        restore_emptied(spec, "initContainers", &input["spec"]);
        restore_emptied(spec, "volumes", &input["spec"]);
        // A grace period the pod left unset (or null) is the base's 60 s.
        let grace = "terminationGracePeriodSeconds";
        if let Some(members) = spec.as_object_mut() {
            match input["spec"].get(grace) {
                None if members.get(grace) == Some(&json!(60)) => {
                    members.remove(grace);
                }
                Some(Value::Null) if members.get(grace) == Some(&json!(60)) => {
                    members.insert(grace.to_owned(), Value::Null);
                }
                _ => {}
            }
        }
    }
    if let Some(metadata) = out.get_mut("metadata") {
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            annotations.remove(INJECT_ANNOTATION);
            annotations.remove(UPSTREAM_PORT_ANNOTATION);
        }
        restore_emptied(metadata, "annotations", &input["metadata"]);
    }
    restore_emptied(out, "metadata", input);
}

/// Puts back `input`'s missing or null `key` where `out` holds an empty
/// sequence or mapping instead.
fn restore_emptied(out: &mut Value, key: &str, input: &Value) {
    let Some(members) = out.as_object_mut() else {
        return;
    };
    let emptied = match members.get(key) {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    match input.get(key) {
        None if emptied => {
            members.remove(key);
        }
        Some(Value::Null) if emptied => {
            members.insert(key.to_owned(), Value::Null);
        }
        _ => {}
    }
}

/// The pod specs of a document as injection sees them.
fn pod_specs(doc: &Value) -> Vec<&Value> {
    match doc["kind"].as_str() {
        Some("List") => doc["items"]
            .as_array()
            .map(|items| items.iter().flat_map(pod_specs).collect())
            .unwrap_or_default(),
        Some("Deployment") => vec![&doc["spec"]["template"]["spec"]],
        Some("CronJob") => vec![&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]],
        Some("Pod") => vec![&doc["spec"]],
        _ => Vec::new(),
    }
}

/// A running `yaml11.py`.
pub(super) struct Reader {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reader {
    /// `None` (after saying so) where PyYAML is missing, outside CI.
    pub(super) fn start() -> Option<Self> {
        let script = root().join("tests/kubernetes/yaml11.py");
        if !available(
            "python3 with PyYAML",
            Command::new("python3").args(["-c", "import yaml"]),
        ) {
            return None;
        }
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Some(Self {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            _child: child,
        })
    }

    /// The documents of `yaml` as YAML 1.1 reads them.
    pub(super) fn read(&mut self, yaml: &str) -> Result<Vec<Value>, String> {
        writeln!(self.stdin, "{}", json!(yaml)).map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        match answer.get("docs") {
            Some(Value::Array(docs)) => Ok(docs.clone()),
            _ => Err(format!("YAML 1.1 cannot read it: {}", answer["error"])),
        }
    }
}

fn check(reader: &mut Reader, docs: &[(Value, Style)]) -> Result<(), String> {
    let input = render(docs);
    let opts = InjectOptions::default();
    let out = scopegate::inject::inject(&input, &opts).map_err(|e| format!("refused: {e}"))?;
    let again =
        scopegate::inject::inject(&out, &opts).map_err(|e| format!("output refused: {e}"))?;
    if again != out {
        return Err(format!("injecting again changed it:\n{out}\n----\n{again}"));
    }
    let read = reader.read(&out).map_err(|e| format!("{e}\n{out}"))?;
    if read.len() != docs.len() {
        return Err(format!(
            "{} documents out of {}:\n{out}",
            read.len(),
            docs.len()
        ));
    }
    for (i, ((doc, _), got)) in docs.iter().zip(&read).enumerate() {
        let mut stripped = got.clone();
        uninject(&mut stripped, doc);
        if stripped != *doc {
            return Err(format!(
                "document {} reads otherwise in YAML 1.1:\nwant {}\ngot  {}\n{out}",
                i + 1,
                doc,
                stripped
            ));
        }
        for spec in pod_specs(got) {
            if spec["initContainers"][0]["name"] != SIDECAR_NAME {
                return Err(format!("document {}: no sidecar first in {spec}", i + 1));
            }
        }
    }
    Ok(())
}

#[test]
fn injected_manifests_read_the_same_in_yaml_1_1() {
    let Some(reader) = Reader::start() else {
        return;
    };
    let reader = std::cell::RefCell::new(reader);
    support::hostile_runner(256)
        .run(&stream(), |docs| {
            check(&mut reader.borrow_mut(), &docs)
                .map_err(proptest::test_runner::TestCaseError::fail)
        })
        .unwrap();
}
