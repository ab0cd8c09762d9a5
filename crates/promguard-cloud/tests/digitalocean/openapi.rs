//! A small OpenAPI 3.0 schema checker for the DigitalOcean spec subset in
//! `tests/data/digitalocean-openapi`: resolves file-relative `$ref`s and
//! checks `type`, `nullable`, `enum`, `pattern`, `maxLength`, `minimum`,
//! `multipleOf`, `properties`, `required` (minus `readOnly` ones in
//! requests), `items`, `allOf`, `anyOf` and `oneOf`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use promguard_cloud::fake_digitalocean::Exchange;
use serde_json::Value;

/// Requests and responses are checked differently (`readOnly`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Request,
    Response,
}

pub struct Spec {
    root: PathBuf,
    files: RefCell<HashMap<PathBuf, Value>>,
}

fn yaml_to_json(v: serde_yaml::Value) -> Value {
    match v {
        serde_yaml::Value::Null => Value::Null,
        serde_yaml::Value::Bool(b) => Value::Bool(b),
        serde_yaml::Value::Number(n) => serde_json::from_str(&n.to_string()).unwrap_or(Value::Null),
        serde_yaml::Value::String(s) => Value::String(s),
        serde_yaml::Value::Sequence(s) => Value::Array(s.into_iter().map(yaml_to_json).collect()),
        serde_yaml::Value::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        serde_yaml::Value::String(s) => s,
                        other => serde_yaml::to_string(&other).unwrap().trim().to_owned(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        serde_yaml::Value::Tagged(t) => yaml_to_json(t.value),
    }
}

/// `firewalls_update` (`PUT /v2/firewalls/{firewall_id}`), which the copied
/// subset lacks: the operation and its response as the official spec
/// (github.com/digitalocean/openapi, `specification/resources/firewalls/`)
/// has them, without the examples. Its `$ref`s resolve within the subset.
const FIREWALLS_UPDATE: &str = r#"
operationId: firewalls_update
parameters:
  - $ref: 'parameters.yml#/firewall_id'
requestBody:
  content:
    application/json:
      schema:
        required:
          - name
        allOf:
          - $ref: 'models/firewall.yml'
          - anyOf:
            - title: Inbound Rules
              required:
                - inbound_rules
            - title: Outbound Rules
              required:
                - outbound_rules
responses:
  '200':
    $ref: 'responses/put_firewall_response.yml'
  '400':
    $ref: '../../shared/responses/bad_request.yml'
  '401':
    $ref: '../../shared/responses/unauthorized.yml'
  '404':
    $ref: '../../shared/responses/not_found.yml'
  '429':
    $ref: '../../shared/responses/too_many_requests.yml'
  '500':
    $ref: '../../shared/responses/server_error.yml'
  default:
    $ref: '../../shared/responses/unexpected_error.yml'
"#;

/// `responses/put_firewall_response.yml` of the official spec, without the
/// example.
const PUT_FIREWALL_RESPONSE: &str = r#"
headers:
  ratelimit-limit:
    $ref: '../../../shared/headers.yml#/ratelimit-limit'
  ratelimit-remaining:
    $ref: '../../../shared/headers.yml#/ratelimit-remaining'
  ratelimit-reset:
    $ref: '../../../shared/headers.yml#/ratelimit-reset'
content:
  application/json:
    schema:
      properties:
        firewall:
          $ref: '../models/firewall.yml'
"#;

impl Spec {
    pub fn load() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/digitalocean-openapi/specification");
        let mut files = HashMap::new();
        let firewalls = root.join("resources/firewalls");
        for (path, text) in [
            (firewalls.join("firewalls_update.yml"), FIREWALLS_UPDATE),
            (
                firewalls.join("responses/put_firewall_response.yml"),
                PUT_FIREWALL_RESPONSE,
            ),
        ] {
            let yaml: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
            files.insert(normalize(&path), yaml_to_json(yaml));
        }
        Self {
            root,
            files: RefCell::new(files),
        }
    }

    fn file(&self, path: &Path) -> Value {
        let path = normalize(path);
        if let Some(v) = self.files.borrow().get(&path) {
            return v.clone();
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read spec file {}: {e}", path.display()));
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("bad YAML in {}: {e}", path.display()));
        let value = yaml_to_json(yaml);
        self.files.borrow_mut().insert(path, value.clone());
        value
    }

    /// Follows `$ref`s until a node without one: (file it is in, node).
    fn resolve(&self, file: &Path, node: &Value) -> (PathBuf, Value) {
        let mut file = file.to_path_buf();
        let mut node = node.clone();
        for _ in 0..50 {
            let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
                return (file, node);
            };
            let (target, pointer) = reference.split_once('#').unwrap_or((reference, ""));
            if !target.is_empty() {
                file = normalize(&file.parent().unwrap().join(target));
            }
            let doc = self.file(&file);
            node = if pointer.is_empty() {
                doc
            } else {
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("no {pointer} in {}", file.display()))
                    .clone()
            };
        }
        panic!("$ref loop at {}", file.display())
    }

    /// Checks `instance` against the schema `node` found in `file`.
    pub fn check(
        &self,
        file: &Path,
        node: &Value,
        instance: &Value,
        mode: Mode,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let (file, schema) = self.resolve(file, node);
        let file = file.as_path();
        if instance.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let ok = match t {
                "string" => instance.is_string(),
                "integer" => instance.is_i64() || instance.is_u64(),
                "number" => instance.is_number(),
                "boolean" => instance.is_boolean(),
                "array" => instance.is_array(),
                "object" => instance.is_object(),
                _ => true,
            };
            if !ok {
                errors.push(format!("{at}: expected {t}, got {instance}"));
                return;
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(instance) {
                errors.push(format!("{at}: {instance} is not one of {options:?}"));
            }
        }
        if let Some(s) = instance.as_str() {
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if s.chars().count() as u64 > max {
                    errors.push(format!("{at}: longer than {max}"));
                }
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                if !regex::Regex::new(p).unwrap().is_match(s) {
                    errors.push(format!("{at}: {s:?} does not match {p}"));
                }
            }
        }
        if let Some(n) = instance.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    errors.push(format!("{at}: {n} < {min}"));
                }
            }
            if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64) {
                if (n / m).fract() != 0.0 {
                    errors.push(format!("{at}: {n} is not a multiple of {m}"));
                }
            }
        }
        if let (Some(props), Some(obj)) = (
            schema.get("properties").and_then(Value::as_object),
            instance.as_object(),
        ) {
            for (name, sub) in props {
                if let Some(value) = obj.get(name) {
                    if mode == Mode::Request && self.read_only(file, sub) {
                        errors.push(format!("{at}.{name}: readOnly property sent in a request"));
                    }
                    self.check(file, sub, value, mode, &format!("{at}.{name}"), errors);
                }
            }
        }
        if let (Some(required), Some(obj)) = (
            schema.get("required").and_then(Value::as_array),
            instance.as_object(),
        ) {
            for name in required.iter().filter_map(Value::as_str) {
                if obj.contains_key(name) {
                    continue;
                }
                let read_only = schema
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .is_some_and(|sub| self.read_only(file, sub));
                if !(mode == Mode::Request && read_only) {
                    errors.push(format!("{at}: required property {name:?} missing"));
                }
            }
        }
        if let (Some(items), Some(list)) = (schema.get("items"), instance.as_array()) {
            for (i, item) in list.iter().enumerate() {
                self.check(file, items, item, mode, &format!("{at}[{i}]"), errors);
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.check(file, sub, instance, mode, at, errors);
            }
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            let passing = any
                .iter()
                .filter(|sub| self.passes(file, sub, instance, mode))
                .count();
            if passing == 0 {
                errors.push(format!("{at}: matches none of anyOf"));
            }
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            let passing = one
                .iter()
                .filter(|sub| self.passes(file, sub, instance, mode))
                .count();
            if passing != 1 {
                let mut detail = Vec::new();
                for sub in one {
                    let mut e = Vec::new();
                    self.check(file, sub, instance, mode, at, &mut e);
                    detail.push(e.join("; "));
                }
                errors.push(format!(
                    "{at}: matches {passing} of oneOf (need 1): {detail:?}"
                ));
            }
        }
    }

    fn passes(&self, file: &Path, node: &Value, instance: &Value, mode: Mode) -> bool {
        let mut e = Vec::new();
        self.check(file, node, instance, mode, "", &mut e);
        e.is_empty()
    }

    fn read_only(&self, file: &Path, node: &Value) -> bool {
        let (_, schema) = self.resolve(file, node);
        schema.get("readOnly") == Some(&Value::Bool(true))
    }

    /// The operation file for a request, relative to `resources/`.
    fn operation(method: &str, path: &str) -> Option<&'static str> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        Some(match (method, segments.as_slice()) {
            ("GET", ["v2", "droplets"]) => "droplets/droplets_list.yml",
            ("POST", ["v2", "droplets"]) => "droplets/droplets_create.yml",
            ("DELETE", ["v2", "droplets"]) => "droplets/droplets_destroy_byTag.yml",
            ("GET", ["v2", "droplets", _]) => "droplets/droplets_get.yml",
            ("DELETE", ["v2", "droplets", _]) => "droplets/droplets_destroy.yml",
            ("GET", ["v2", "account", "keys"]) => "ssh_keys/sshKeys_list.yml",
            ("POST", ["v2", "account", "keys"]) => "ssh_keys/sshKeys_create.yml",
            ("GET", ["v2", "account", "keys", _]) => "ssh_keys/sshKeys_get.yml",
            ("DELETE", ["v2", "account", "keys", _]) => "ssh_keys/sshKeys_delete.yml",
            ("POST", ["v2", "tags"]) => "tags/tags_create.yml",
            ("DELETE", ["v2", "tags", _]) => "tags/tags_delete.yml",
            ("GET", ["v2", "firewalls"]) => "firewalls/firewalls_list.yml",
            ("POST", ["v2", "firewalls"]) => "firewalls/firewalls_create.yml",
            ("PUT", ["v2", "firewalls", _]) => "firewalls/firewalls_update.yml",
            ("DELETE", ["v2", "firewalls", _]) => "firewalls/firewalls_delete.yml",
            _ => return None,
        })
    }

    /// Checks one exchange's request body and response (status, body,
    /// rate-limit headers) against its operation; returns the problems.
    pub fn check_exchange(&self, x: &Exchange) -> Vec<String> {
        let mut errors = Vec::new();
        let at = format!("{} {}", x.method, x.path);
        let Some(op_path) = Self::operation(&x.method, &x.path) else {
            return vec![format!("{at}: not an operation of the spec subset")];
        };
        let op_file = self.root.join("resources").join(op_path);
        let op = self.file(&op_file);
        if let Some(body) = &x.request_body {
            match op.pointer("/requestBody/content/application~1json/schema") {
                Some(schema) => self.check(
                    &op_file,
                    schema,
                    body,
                    Mode::Request,
                    &format!("{at} request"),
                    &mut errors,
                ),
                None => errors.push(format!("{at}: the operation takes no request body")),
            }
        }
        let status = x.status.to_string();
        let shared = self.root.join("shared/responses");
        let (resp_file, response) = match op.pointer(&format!("/responses/{status}")) {
            Some(r) => self.resolve(&op_file, r),
            // The subset's operations do not list 422 and some 404s; the
            // real API answers them with the shared error bodies.
            None if x.status == 422 => {
                let f = shared.join("unprocessable_entity.yml");
                (f.clone(), self.file(&f))
            }
            None if x.status == 404 => {
                let f = shared.join("not_found.yml");
                (f.clone(), self.file(&f))
            }
            None => match op.pointer("/responses/default") {
                Some(r) => self.resolve(&op_file, r),
                None => return vec![format!("{at}: status {status} not in the spec")],
            },
        };
        let schema = response.pointer("/content/application~1json/schema");
        match (schema, &x.response_body) {
            (Some(schema), Some(body)) => self.check(
                &resp_file,
                schema,
                body,
                Mode::Response,
                &format!("{at} {status} response"),
                &mut errors,
            ),
            (Some(_), None) => errors.push(format!("{at} {status}: response body missing")),
            (None, Some(body)) => {
                errors.push(format!("{at} {status}: unexpected response body {body}"))
            }
            (None, None) => {}
        }
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for name in headers.keys().filter(|h| h.starts_with("ratelimit-")) {
                let value = x
                    .response_headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v);
                if value.and_then(|v| v.parse::<u64>().ok()).is_none() {
                    errors.push(format!(
                        "{at} {status}: header {name} missing or not an integer"
                    ));
                }
            }
        }
        errors
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
