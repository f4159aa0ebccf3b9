//! Filters from the configuration users already run: Envoy's HTTP Wasm filter
//! (`envoy.extensions.filters.http.wasm.v3.Wasm`, alone, as an `http_filters` entry or a list of
//! them) and Istio's `WasmPlugin` resource, in YAML or JSON (one document or several). Every field
//! is read or refused: a field pier does not support is an error naming it, never ignored.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::filters::{FilterFailure, FilterSpec};
use crate::grants::EnvGrant;

/// An Envoy or Istio filter configuration pier cannot take, with where in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ImportError {
    file: String,
    message: String,
}

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const STRUCT: &str = "type.googleapis.com/google.protobuf.Struct";

/// Reads the filters configured in `file`. Relative code paths are taken from the file's
/// directory.
pub fn load_filters(file: &Path) -> Result<Vec<FilterSpec>, ImportError> {
    let error = |message: String| ImportError {
        file: file.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|e| error(format!("cannot read it: {e}")))?;
    let base = file.parent().unwrap_or(Path::new(""));
    parse_filters(&text, base).map_err(error)
}

/// The filters configured in `text`; code paths are relative to `base`.
pub fn parse_filters(text: &str, base: &Path) -> Result<Vec<FilterSpec>, String> {
    let mut envoy = Vec::new();
    let mut istio = Vec::new();
    for (n, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| format!("not valid YAML or JSON: {e}"))?;
        let at = if n == 0 {
            String::new()
        } else {
            format!("document {}: ", n + 1)
        };
        let mut reader = Reader {
            base,
            envoy: &mut envoy,
            istio: &mut istio,
        };
        reader.document(&value).map_err(|e| format!("{at}{e}"))?;
    }
    // Istio orders plugins by phase, then by priority (highest first); ties keep file order.
    istio.sort_by_key(|(phase, priority, _)| (*phase, std::cmp::Reverse(*priority)));
    envoy.extend(istio.into_iter().map(|(_, _, spec)| spec));
    if envoy.is_empty() {
        return Err("no Wasm filter in it".into());
    }
    Ok(envoy)
}

struct Reader<'a> {
    base: &'a Path,
    envoy: &'a mut Vec<FilterSpec>,
    /// (phase rank, priority, spec)
    istio: &'a mut Vec<(u8, i64, FilterSpec)>,
}

/// An object whose fields are taken one by one; what is left over is an error.
struct Fields {
    path: String,
    map: Map<String, Value>,
}

impl Fields {
    fn of(value: &Value, path: &str) -> Result<Fields, String> {
        match value {
            Value::Object(map) => Ok(Fields {
                path: path.to_string(),
                map: map.clone(),
            }),
            _ => Err(format!("{}: expected an object", display(path))),
        }
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{}: expected a string", self.at(key))),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(format!("{}: expected true or false", self.at(key))),
        }
    }

    /// Fails on the first field not taken.
    fn done(self) -> Result<(), String> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(format!(
                "{}: pier does not support this field",
                if self.path.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.path)
                }
            )),
        }
    }
}

fn display(path: &str) -> &str {
    if path.is_empty() {
        "the document"
    } else {
        path
    }
}

impl Reader<'_> {
    fn document(&mut self, value: &Value) -> Result<(), String> {
        match value {
            Value::Null => Ok(()),
            Value::Array(entries) => {
                for (i, entry) in entries.iter().enumerate() {
                    self.entry(entry, &format!("[{i}]"))?;
                }
                Ok(())
            }
            Value::Object(map) if map.contains_key("kind") || map.contains_key("apiVersion") => {
                self.istio(value)
            }
            Value::Object(map) if map.contains_key("http_filters") => {
                let mut fields = Fields::of(value, "")?;
                let Some(Value::Array(entries)) = fields.take("http_filters") else {
                    return Err("http_filters: expected a list".into());
                };
                fields.done()?;
                for (i, entry) in entries.iter().enumerate() {
                    self.entry(entry, &format!("http_filters[{i}]"))?;
                }
                Ok(())
            }
            _ => self.entry(value, ""),
        }
    }

    /// An `http_filters` entry (`name` + `typed_config`), a `Wasm` message, or a
    /// `PluginConfig`.
    fn entry(&mut self, value: &Value, path: &str) -> Result<(), String> {
        let mut fields = Fields::of(value, path)?;
        if let Some(typed) = fields.take("typed_config") {
            let name = fields.string("name")?;
            fields.done()?;
            let at = format!("{}typed_config", prefix(path));
            let kind = type_of(&typed, &at)?;
            if kind == ROUTER_TYPE {
                // The chain's end: pier's handler (component or upstream) plays its part.
                return Ok(());
            }
            if kind != WASM_TYPE {
                return Err(format!(
                    "{}: filter {} is not a Wasm filter ({kind}); pier runs only {WASM_TYPE}",
                    at,
                    name.as_deref().unwrap_or("?")
                ));
            }
            return self.wasm(&typed, &at);
        }
        if fields.map.contains_key("config") {
            drop(fields);
            return self.wasm(value, path);
        }
        drop(fields);
        let spec = plugin(value, path, self.base)?;
        self.envoy.push(spec);
        Ok(())
    }

    /// `envoy.extensions.filters.http.wasm.v3.Wasm`: `{config: PluginConfig}`.
    fn wasm(&mut self, value: &Value, path: &str) -> Result<(), String> {
        let mut fields = Fields::of(value, path)?;
        if let Some(kind) = fields.string("@type")?
            && kind != WASM_TYPE
        {
            return Err(format!("{}: expected {WASM_TYPE}", fields.at("@type")));
        }
        let config = fields
            .take("config")
            .ok_or_else(|| format!("{}: missing", fields.at("config")))?;
        let at = fields.at("config");
        fields.done()?;
        let spec = plugin(&config, &at, self.base)?;
        self.envoy.push(spec);
        Ok(())
    }

    /// An Istio `WasmPlugin` (`extensions.istio.io`).
    fn istio(&mut self, value: &Value) -> Result<(), String> {
        let mut resource = Fields::of(value, "")?;
        let api = resource.string("apiVersion")?.unwrap_or_default();
        let kind = resource.string("kind")?.unwrap_or_default();
        if kind != "WasmPlugin" || !api.starts_with("extensions.istio.io/") {
            return Err(format!(
                "kind {kind:?} (apiVersion {api:?}): pier reads only Istio's WasmPlugin (extensions.istio.io)"
            ));
        }
        let mut metadata = Fields::of(
            &resource.take("metadata").unwrap_or(Value::Null),
            "metadata",
        )?;
        let name = metadata
            .string("name")?
            .ok_or("metadata.name: missing (the plugin's name)")?;
        let namespace = metadata.string("namespace")?;
        // Bookkeeping with no effect on the filter.
        metadata.take("labels");
        metadata.take("annotations");
        metadata.done()?;
        let mut spec = Fields::of(&resource.take("spec").unwrap_or(Value::Null), "spec")?;
        resource.done()?;

        let url = spec.string("url")?.ok_or("spec.url: missing")?;
        let file = url.strip_prefix("file://").ok_or_else(|| {
            format!("spec.url: {url:?}: pier loads filters from files only (file://PATH)")
        })?;
        let path = self.base.join(file);
        if let Some(sha) = spec.string("sha256")? {
            check_sha256(&path, &sha).map_err(|e| format!("spec.sha256: {e}"))?;
        }
        let mut filter = FilterSpec {
            name: Some(match namespace {
                Some(ns) => format!("{ns}.{name}"),
                None => name,
            }),
            path,
            root_id: spec.string("pluginName")?.unwrap_or_default(),
            ..Default::default()
        };
        if let Some(config) = spec.take("pluginConfig") {
            filter.config = match config {
                Value::Object(_) => config.to_string().into_bytes(),
                _ => return Err("spec.pluginConfig: expected an object".into()),
            };
        }
        filter.failure = match spec.string("failStrategy")?.as_deref() {
            None | Some("FAIL_CLOSE") => FilterFailure::FailClosed,
            Some("FAIL_OPEN") => FilterFailure::FailOpen,
            Some(other) => {
                return Err(format!(
                    "spec.failStrategy: {other}: pier supports FAIL_CLOSE and FAIL_OPEN"
                ));
            }
        };
        let phase = match spec.string("phase")?.as_deref() {
            Some("AUTHN") => 0,
            Some("AUTHZ") => 1,
            Some("STATS") => 2,
            None | Some("UNSPECIFIED_PHASE") => 3,
            Some(other) => {
                return Err(format!(
                    "spec.phase: {other}: expected AUTHN, AUTHZ, STATS or UNSPECIFIED_PHASE"
                ));
            }
        };
        let priority = match spec.take("priority") {
            None => 0,
            Some(v) => v.as_i64().ok_or("spec.priority: expected an integer")?,
        };
        match spec.string("type")?.as_deref() {
            None | Some("HTTP") => {}
            Some(other) => {
                return Err(format!("spec.type: {other}: pier runs HTTP filters only"));
            }
        }
        if let Some(vm) = spec.take("vmConfig") {
            let mut vm = Fields::of(&vm, "spec.vmConfig")?;
            if let Some(env) = vm.take("env") {
                let Value::Array(env) = env else {
                    return Err("spec.vmConfig.env: expected a list".into());
                };
                for (i, var) in env.iter().enumerate() {
                    filter
                        .env
                        .push(istio_env(var, &format!("spec.vmConfig.env[{i}]"))?);
                }
            }
            vm.done()?;
        }
        spec.done()?;
        self.istio.push((phase, priority, filter));
        Ok(())
    }
}

fn prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    }
}

fn type_of(value: &Value, path: &str) -> Result<String, String> {
    value
        .get("@type")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{path}: missing @type"))
}

/// Envoy's `PluginConfig`.
fn plugin(value: &Value, path: &str, base: &Path) -> Result<FilterSpec, String> {
    let mut fields = Fields::of(value, path)?;
    let mut spec = FilterSpec {
        name: fields.string("name")?.filter(|n| !n.is_empty()),
        root_id: fields.string("root_id")?.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(config) = fields.take("configuration") {
        spec.config = any_bytes(&config, &fields.at("configuration"))?;
    }
    let fail_open = fields.bool("fail_open")?;
    let policy = fields.string("failure_policy")?;
    spec.failure = match (fail_open, policy.as_deref()) {
        (_, Some("FAIL_OPEN")) | (Some(true), None) => FilterFailure::FailOpen,
        (_, Some("FAIL_CLOSED" | "UNSPECIFIED")) | (Some(false) | None, None) => {
            FilterFailure::FailClosed
        }
        (_, Some(other)) => {
            return Err(format!(
                "{}: {other}: pier supports FAIL_CLOSED and FAIL_OPEN",
                fields.at("failure_policy")
            ));
        }
    };
    let vm = fields
        .take("vm_config")
        .ok_or_else(|| format!("{}: missing", fields.at("vm_config")))?;
    let vm_path = fields.at("vm_config");
    fields.done()?;

    let mut vm = Fields::of(&vm, &vm_path)?;
    spec.vm_id = vm.string("vm_id")?.unwrap_or_default();
    match vm.string("runtime")?.as_deref() {
        None
        | Some(
            "envoy.wasm.runtime.v8"
            | "envoy.wasm.runtime.wasmtime"
            | "envoy.wasm.runtime.wamr"
            | "envoy.wasm.runtime.wavm",
        ) => {}
        Some(other) => {
            return Err(format!(
                "{}: {other}: pier runs filters compiled to WebAssembly (on wasmtime)",
                vm.at("runtime")
            ));
        }
    }
    for flag in ["allow_precompiled", "nack_on_code_cache_miss"] {
        if vm.bool(flag)? == Some(true) {
            return Err(format!("{}: pier does not support true", vm.at(flag)));
        }
    }
    if let Some(config) = vm.take("configuration") {
        spec.vm_config = any_bytes(&config, &vm.at("configuration"))?;
    }
    if let Some(env) = vm.take("environment_variables") {
        let mut env = Fields::of(&env, &vm.at("environment_variables"))?;
        if let Some(keys) = env.take("host_env_keys") {
            let Value::Array(keys) = keys else {
                return Err(format!("{}: expected a list", env.at("host_env_keys")));
            };
            for key in keys {
                let name = key
                    .as_str()
                    .ok_or_else(|| format!("{}: expected names", env.at("host_env_keys")))?;
                spec.env
                    .push(env_grant(name, None, &env.at("host_env_keys"))?);
            }
        }
        if let Some(values) = env.take("key_values") {
            let Value::Object(values) = values else {
                return Err(format!("{}: expected a map", env.at("key_values")));
            };
            for (name, value) in values {
                let value = value
                    .as_str()
                    .ok_or_else(|| format!("{}.{name}: expected a string", env.at("key_values")))?;
                spec.env
                    .push(env_grant(&name, Some(value), &env.at("key_values"))?);
            }
        }
        env.done()?;
    }
    let code = vm
        .take("code")
        .ok_or_else(|| format!("{}: missing", vm.at("code")))?;
    let code_path = vm.at("code");
    vm.done()?;
    let mut code = Fields::of(&code, &code_path)?;
    let local = code.take("local").ok_or_else(|| {
        format!("{code_path}: pier loads filters from local files only (code.local.filename)")
    })?;
    let local_path = code.at("local");
    code.done()?;
    let mut local = Fields::of(&local, &local_path)?;
    let filename = local
        .string("filename")?
        .ok_or_else(|| format!("{local_path}.filename: missing"))?;
    local.done()?;
    spec.path = base.join(filename);
    Ok(spec)
}

/// A `google.protobuf.Any` configuration: a `StringValue`'s text, or a `Struct` as JSON.
fn any_bytes(value: &Value, path: &str) -> Result<Vec<u8>, String> {
    let mut fields = Fields::of(value, path)?;
    let kind = fields
        .string("@type")?
        .ok_or_else(|| format!("{path}: missing @type"))?;
    let inner = fields.take("value");
    fields.done()?;
    match (kind.as_str(), inner) {
        (STRING_VALUE, Some(Value::String(s))) => Ok(s.into_bytes()),
        (STRING_VALUE, None) => Ok(Vec::new()),
        (STRUCT, Some(v @ Value::Object(_))) => Ok(v.to_string().into_bytes()),
        (STRUCT, None) => Ok(b"{}".to_vec()),
        (STRING_VALUE | STRUCT, Some(_)) => Err(format!("{path}.value: wrong type for {kind}")),
        _ => Err(format!(
            "{path}.@type: {kind}: pier supports google.protobuf.StringValue and google.protobuf.Struct"
        )),
    }
}

fn env_grant(name: &str, value: Option<&str>, path: &str) -> Result<EnvGrant, String> {
    let text = match value {
        Some(value) => format!("{name}={value}"),
        None => name.to_string(),
    };
    match text.parse::<EnvGrant>() {
        Ok(EnvGrant::Set { name: n, value: v }) if value.is_some() => {
            Ok(EnvGrant::Set { name: n, value: v })
        }
        Ok(grant @ EnvGrant::Inherit { .. }) if value.is_none() => Ok(grant),
        _ => Err(format!("{path}: invalid variable name {name:?}")),
    }
}

/// One of Istio's `vmConfig.env` entries.
fn istio_env(value: &Value, path: &str) -> Result<EnvGrant, String> {
    let mut fields = Fields::of(value, path)?;
    let name = fields
        .string("name")?
        .ok_or_else(|| format!("{path}.name: missing"))?;
    let value = fields.string("value")?;
    let from = fields.string("valueFrom")?;
    fields.done()?;
    match from.as_deref() {
        None | Some("INLINE") => env_grant(&name, Some(value.as_deref().unwrap_or("")), path),
        Some("HOST") => env_grant(&name, None, path),
        Some(other) => Err(format!(
            "{path}.valueFrom: {other}: expected INLINE or HOST"
        )),
    }
}

fn check_sha256(path: &PathBuf, expected: &str) -> Result<(), String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let actual = hex::encode(sha2::Sha256::digest(&bytes));
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(format!(
            "{} has sha256 {actual}, not {expected}",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<FilterSpec>, String> {
        parse_filters(text, Path::new("/etc/filters"))
    }

    const ENVOY: &str = r#"
http_filters:
- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: add_header
      root_id: add_header_root
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: '{"header":"x-a"}'
      fail_open: true
      vm_config:
        runtime: envoy.wasm.runtime.v8
        vm_id: shared
        code: { local: { filename: filter.wasm } }
        configuration:
          "@type": type.googleapis.com/google.protobuf.Struct
          value: { mode: fast }
        environment_variables:
          host_env_keys: [HOME]
          key_values: { REGION: eu }
- name: envoy.filters.http.router
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

    #[test]
    fn envoy_http_filters() {
        let specs = parse(ENVOY).unwrap();
        assert_eq!(
            specs.len(),
            1,
            "the router is the chain's end, not a filter"
        );
        let s = &specs[0];
        assert_eq!(s.path, Path::new("/etc/filters/filter.wasm"));
        assert_eq!(s.name.as_deref(), Some("add_header"));
        assert_eq!(s.root_id, "add_header_root");
        assert_eq!(s.vm_id, "shared");
        assert_eq!(s.config, br#"{"header":"x-a"}"#);
        assert_eq!(s.vm_config, br#"{"mode":"fast"}"#);
        assert_eq!(s.failure, FilterFailure::FailOpen);
        assert_eq!(
            s.env,
            vec![
                EnvGrant::Inherit {
                    name: "HOME".into()
                },
                EnvGrant::Set {
                    name: "REGION".into(),
                    value: "eu".into()
                }
            ]
        );
    }

    #[test]
    fn json_and_the_bare_wasm_message() {
        let json = r#"{"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"root_id": "r", "vm_config": {"code": {"local": {"filename": "/abs/f.wasm"}}}}}"#;
        let specs = parse(json).unwrap();
        assert_eq!(specs[0].path, Path::new("/abs/f.wasm"));
        assert_eq!(specs[0].root_id, "r");
        assert_eq!(specs[0].name, None);
        assert_eq!(specs[0].failure, FilterFailure::FailClosed);
    }

    #[test]
    fn istio_wasm_plugins_in_phase_and_priority_order() {
        let yaml = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: stats, namespace: prod }
spec:
  url: file://stats.wasm
  phase: STATS
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: low }
spec:
  url: file:///abs/auth.wasm
  pluginName: auth_root
  phase: AUTHN
  priority: 1
  failStrategy: FAIL_OPEN
  pluginConfig: { realm: api }
  vmConfig:
    env:
    - { name: TOKEN, value: s3cret }
    - { name: HOME, valueFrom: HOST }
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: high }
spec:
  url: file:///abs/auth.wasm
  phase: AUTHN
  priority: 10
"#;
        let specs = parse(yaml).unwrap();
        let names: Vec<_> = specs.iter().map(|s| s.name.clone().unwrap()).collect();
        assert_eq!(names, ["high", "low", "prod.stats"]);
        let low = &specs[1];
        assert_eq!(low.root_id, "auth_root");
        assert_eq!(low.config, br#"{"realm":"api"}"#);
        assert_eq!(low.failure, FilterFailure::FailOpen);
        assert_eq!(low.env.len(), 2);
        assert_eq!(specs[2].path, Path::new("/etc/filters/stats.wasm"));
    }

    #[test]
    fn every_unsupported_field_is_named() {
        let cases = [
            (
                ENVOY.replace("fail_open: true", "fail_open: true\n      capability_restriction_config: {}"),
                "http_filters[0].typed_config.config.capability_restriction_config: pier does not support this field",
            ),
            (
                ENVOY.replace("runtime: envoy.wasm.runtime.v8", "runtime: envoy.wasm.runtime.null"),
                "http_filters[0].typed_config.config.vm_config.runtime: envoy.wasm.runtime.null",
            ),
            (
                ENVOY.replace("code: { local: { filename: filter.wasm } }", "code: { remote: { http_uri: { uri: x } } }"),
                "pier loads filters from local files only",
            ),
            (
                ENVOY.replace("type.googleapis.com/google.protobuf.StringValue", "type.googleapis.com/google.protobuf.BytesValue"),
                "configuration.@type: type.googleapis.com/google.protobuf.BytesValue",
            ),
            (
                ENVOY.replace("key_values: { REGION: eu }", "key_values: { REGION: eu }\n          extra: 1"),
                "environment_variables.extra: pier does not support this field",
            ),
            (
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec: {url: 'file:///a.wasm', selector: {matchLabels: {app: x}}}".into(),
                "spec.selector: pier does not support this field",
            ),
            (
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec: {url: 'oci://ghcr.io/a:1'}".into(),
                "pier loads filters from files only",
            ),
            (
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec: {url: 'file:///a.wasm', failStrategy: FAIL_RELOAD}".into(),
                "spec.failStrategy: FAIL_RELOAD",
            ),
            (
                "name: x\ntyped_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}".into(),
                "is not a Wasm filter",
            ),
            ("kind: Deployment".into(), "pier reads only Istio's WasmPlugin"),
            ("[".into(), "not valid YAML or JSON"),
            ("".into(), "no Wasm filter in it"),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }
}
