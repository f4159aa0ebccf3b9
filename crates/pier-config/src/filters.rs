//! Proxy-Wasm filters as pier runs them: one `FilterSpec` per plugin, whether it came from
//! `--filter` flags or from an Envoy or Istio configuration (`envoy` module).

use std::path::PathBuf;

use crate::grants::EnvGrant;

/// What a failing filter does to the requests it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterFailure {
    /// Answer 503 (the default: a failed security filter must not let traffic through).
    #[default]
    FailClosed,
    /// Skip the filter.
    FailOpen,
}

/// One Proxy-Wasm plugin: its code, the VM it runs in, and its root context's configuration
/// (Envoy's `PluginConfig` with its `vm_config`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterSpec {
    /// The filter module.
    pub path: PathBuf,
    /// `plugin_name`, and the name in the log and on metrics (`None`: the file stem).
    pub name: Option<String>,
    /// `plugin_root_id`: the root context the plugin uses (empty by default).
    pub root_id: String,
    /// `plugin_vm_id`: plugins naming the same non-empty VM id and the same code share their
    /// VMs (empty: the plugin's own VMs).
    pub vm_id: String,
    /// The plugin configuration (`proxy_on_configure`).
    pub config: Vec<u8>,
    /// The VM configuration (`proxy_on_vm_start`).
    pub vm_config: Vec<u8>,
    /// Environment variables the filter sees through WASI: set, or passed from the host.
    pub env: Vec<EnvGrant>,
    /// What a failing filter does to requests.
    pub failure: FilterFailure,
}

impl FilterSpec {
    /// The filter's environment: set values, and the host's values of inherited names that the
    /// host has (`host` looks a name up).
    pub fn environment(&self, host: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|grant| match grant {
                EnvGrant::Set { name, value } => Some((name.clone(), value.clone())),
                EnvGrant::Inherit { name } => host(name).map(|value| (name.clone(), value)),
            })
            .collect()
    }
}

/// Groups `specs` by the VMs they share: specs with the same non-empty `vm_id`, the same code
/// and the same VM configuration and environment share one group (in order of first
/// appearance); any other spec is a group of its own. Gives the indices of each group.
pub fn vm_groups(specs: &[FilterSpec]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let same = |j: &usize| {
            let other = &specs[*j];
            !spec.vm_id.is_empty()
                && other.vm_id == spec.vm_id
                && other.path == spec.path
                && other.vm_config == spec.vm_config
                && other.env == spec.env
        };
        match groups.iter_mut().find(|g| g.first().is_some_and(same)) {
            Some(group) => group.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, vm_id: &str) -> FilterSpec {
        FilterSpec {
            path: path.into(),
            vm_id: vm_id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn plugins_on_one_vm_id_and_code_share_vms() {
        let specs = [
            spec("a.wasm", "shared"),
            spec("a.wasm", ""),
            spec("a.wasm", "shared"),
            spec("b.wasm", "shared"),
            spec("a.wasm", ""),
        ];
        assert_eq!(
            vm_groups(&specs),
            vec![vec![0, 2], vec![1], vec![3], vec![4]],
            "no vm_id: VMs of its own; another file on the same vm_id: other VMs"
        );
        let mut other_config = spec("a.wasm", "shared");
        other_config.vm_config = b"x".to_vec();
        assert_eq!(
            vm_groups(&[spec("a.wasm", "shared"), other_config]).len(),
            2
        );
    }

    #[test]
    fn environment_sets_and_inherits() {
        let spec = FilterSpec {
            env: vec![
                "A=1".parse().unwrap(),
                "HOME_ONLY".parse().unwrap(),
                "UNSET".parse().unwrap(),
            ],
            ..Default::default()
        };
        let host = |name: &str| (name == "HOME_ONLY").then(|| "h".to_string());
        assert_eq!(
            spec.environment(host),
            vec![("A".into(), "1".into()), ("HOME_ONLY".into(), "h".into())]
        );
    }
}
