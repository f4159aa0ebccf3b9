//! Proxy-Wasm plugins configured as Envoy and Istio configure them: names, root ids, VM ids and
//! environment variables (flags, an Envoy filter config, an Istio WasmPlugin), plugins sharing
//! their VMs, and every start-up error a user gets for a configuration pier cannot take.

use http::StatusCode;
use pier_testkit::{PROTOS, PierServer, assert_one_line_error, get, guest};

fn pier() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_pier"))
}

/// The fields of an `x-plugin-ROOT` header the hostcalls filter adds on `/t/plugin`, as the echo
/// guest returns it.
fn plugin_header(answer: &pier_testkit::Answer, root_id: &str) -> String {
    let name = format!("x-echo-x-plugin-{root_id}");
    answer
        .headers
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", answer.headers))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn flags_name_the_plugin_its_root_and_its_vm() {
    let filter = guest("filter-hostcalls");
    let app = guest("echo");
    let server = PierServer::start_with_env(
        pier(),
        &[
            "--filter",
            filter.to_str().unwrap(),
            "--filter-name",
            "auth",
            "--filter-root-id",
            "auth_root",
            "--filter-vm-id",
            "edge",
            "--filter-config",
            "label=first",
            "--filter-env",
            "REGION=eu-west",
            "--filter-env",
            "FROM_HOST",
            "--filter-env",
            "NOT_ON_HOST",
            app.to_str().unwrap(),
        ],
        &[("FROM_HOST", "host value"), ("NOT_GIVEN", "secret")],
    )
    .unwrap();
    for proto in PROTOS {
        for (property, expected) in [
            ("plugin_name", "auth"),
            ("plugin_root_id", "auth_root"),
            ("plugin_vm_id", "edge"),
        ] {
            let answer = get(&server.addr, proto, &format!("/t/log/property/{property}"))
                .await
                .unwrap();
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (StatusCode::OK, expected),
                "{property} {proto:?}"
            );
        }
        for (name, expected) in [
            ("REGION", (StatusCode::OK, "eu-west")),
            ("FROM_HOST", (StatusCode::OK, "host value")),
            ("NOT_ON_HOST", (StatusCode::NOT_FOUND, "not set")),
            ("NOT_GIVEN", (StatusCode::NOT_FOUND, "not set")),
        ] {
            let answer = get(&server.addr, proto, &format!("/t/env/{name}"))
                .await
                .unwrap();
            assert_eq!(
                (answer.status, answer.text().as_str()),
                expected,
                "{name}: only the granted variables, from the flags or the host"
            );
        }
        let answer = get(&server.addr, proto, "/t/plugin").await.unwrap();
        let header = plugin_header(&answer, "auth_root");
        assert!(
            header.starts_with("name=auth;vm=edge;label=first;"),
            "{header}"
        );
    }
    // The plugin's name is what the log calls it.
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("property plugin_name: auth"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("filter=auth") || line.contains("filter=\"auth\""),
        "{line}"
    );
}

/// Two plugins on one VM id and the same code run as two root contexts of the same VMs (one
/// VM here: each request creates a stream context per plugin in it), each with its own
/// configuration; a third plugin of the same file without the VM id gets VMs of its own.
#[tokio::test]
async fn plugins_on_one_vm_id_share_their_vms() {
    let filter = guest("filter-hostcalls");
    let path = filter.to_str().unwrap();
    let app = guest("echo");
    let server = PierServer::start(
        pier(),
        &[
            "--filter-vms",
            "1",
            "--filter",
            path,
            "--filter",
            path,
            "--filter",
            path,
            "--filter-root-id",
            "a",
            "--filter-root-id",
            "b",
            "--filter-root-id",
            "c",
            "--filter-vm-id",
            "shared",
            "--filter-vm-id",
            "shared",
            "--filter-config",
            "label=one",
            "--filter-config",
            "label=two",
            "--filter-config",
            "label=three",
            app.to_str().unwrap(),
        ],
    )
    .unwrap();
    let answer = get(&server.addr, PROTOS[0], "/t/plugin").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        plugin_header(&answer, "a"),
        "name=filter-hostcalls;vm=shared;label=one;streams=1"
    );
    assert_eq!(
        plugin_header(&answer, "b"),
        "name=filter-hostcalls;vm=shared;label=two;streams=2",
        "the second plugin's stream was the shared VM's second"
    );
    assert_eq!(
        plugin_header(&answer, "c"),
        "name=filter-hostcalls;vm=;label=three;streams=1",
        "no VM id: VMs of its own"
    );
}

/// The same two filters, from an Envoy HTTP filter list (YAML), a JSON Wasm message and an
/// Istio WasmPlugin: each reaches the filter with its name, root id, configuration and
/// environment.
#[tokio::test]
async fn envoy_and_istio_configs_load_the_same_filters() {
    let filter = guest("filter-hostcalls");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&filter, dir.path().join("hostcalls.wasm")).unwrap();
    let envoy = r#"
http_filters:
- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: first
      root_id: r1
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: label=one
      vm_config:
        runtime: envoy.wasm.runtime.v8
        vm_id: edge
        code: { local: { filename: hostcalls.wasm } }
        environment_variables:
          key_values: { REGION: eu }
- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: second
      root_id: r2
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: label=two
      vm_config:
        vm_id: edge
        code: { local: { filename: hostcalls.wasm } }
        environment_variables:
          key_values: { REGION: eu }
- name: envoy.filters.http.router
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;
    let istio = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: second }
spec:
  url: file://hostcalls.wasm
  pluginName: r2
  phase: AUTHZ
  vmConfig:
    env: [{ name: REGION, value: eu }]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: first }
spec:
  url: file://hostcalls.wasm
  pluginName: r1
  phase: AUTHN
  vmConfig:
    env: [{ name: REGION, value: eu }]
"#;
    std::fs::write(dir.path().join("envoy.yaml"), envoy).unwrap();
    std::fs::write(dir.path().join("istio.yaml"), istio).unwrap();
    let app = guest("echo");
    for file in ["envoy.yaml", "istio.yaml"] {
        let config = dir.path().join(file);
        let server = PierServer::start(
            pier(),
            &[
                "--filter-vms",
                "1",
                "--filter-envoy-config",
                config.to_str().unwrap(),
                app.to_str().unwrap(),
            ],
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        let answer = get(&server.addr, PROTOS[0], "/t/plugin").await.unwrap();
        let (first, second) = (plugin_header(&answer, "r1"), plugin_header(&answer, "r2"));
        assert!(first.starts_with("name=first;"), "{file}: {first}");
        assert!(second.starts_with("name=second;"), "{file}: {second}");
        if file == "envoy.yaml" {
            assert_eq!(first, "name=first;vm=edge;label=one;streams=1");
            assert_eq!(
                second, "name=second;vm=edge;label=two;streams=2",
                "one vm_id, one file: shared VMs"
            );
        } else {
            // Istio: AUTHN before AUTHZ whatever the file's order; VMs of their own.
            assert_eq!(first, "name=first;vm=;label=;streams=1");
            assert_eq!(second, "name=second;vm=;label=;streams=1");
        }
        let env = get(&server.addr, PROTOS[1], "/t/env/REGION").await.unwrap();
        assert_eq!(env.text(), "eu", "{file}");
    }
}

#[test]
fn configuration_errors_name_what_is_wrong() {
    let filter = guest("filter-hostcalls");
    let path = filter.to_str().unwrap();
    let app = guest("echo");
    let app = app.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        file.to_str().unwrap().to_string()
    };
    let unsupported = write(
        "unsupported.yaml",
        "config:\n  vm_config:\n    code: { local: { filename: f.wasm } }\n  capability_restriction_config: {}\n",
    );
    assert_one_line_error(
        pier(),
        &["serve", "--filter-envoy-config", &unsupported, app],
        &[
            "unsupported.yaml",
            "config.capability_restriction_config: pier does not support this field",
        ],
    );
    let remote = write(
        "remote.yaml",
        "config:\n  vm_config:\n    code: { remote: { http_uri: { uri: 'https://x' } } }\n",
    );
    assert_one_line_error(
        pier(),
        &["serve", "--filter-envoy-config", &remote, app],
        &["remote.yaml", "config.vm_config.code", "local files only"],
    );
    let selector = write(
        "selector.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec: {url: 'file:///a.wasm', selector: {matchLabels: {app: x}}}\n",
    );
    assert_one_line_error(
        pier(),
        &["serve", "--filter-envoy-config", &selector, app],
        &[
            "selector.yaml",
            "spec.selector: pier does not support this field",
        ],
    );
    let digest = write(
        "digest.yaml",
        &format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: a}}\nspec: {{url: 'file://{path}', sha256: '00'}}\n"
        ),
    );
    assert_one_line_error(
        pier(),
        &["serve", "--filter-envoy-config", &digest, app],
        &["digest.yaml", "spec.sha256", "not 00"],
    );
    assert_one_line_error(
        pier(),
        &["serve", "--filter-env", "A=1", "--filter", path, app],
        &["--filter-env applies to the --filter given before it"],
    );
    assert_one_line_error(
        pier(),
        &[
            "serve",
            "--filter",
            path,
            "--filter-root-id",
            "a",
            "--filter-root-id",
            "b",
            app,
        ],
        &["--filter-root-id given 2 times for 1 --filter"],
    );
    assert_one_line_error(
        pier(),
        &[
            "serve",
            "--filter",
            path,
            "--filter",
            path,
            "--filter-vm-id",
            "v",
            "--filter-vm-id",
            "v",
            app,
        ],
        &[
            "share VM \"v\" with the same root id \"\"",
            "give each its own root id",
        ],
    );
}
