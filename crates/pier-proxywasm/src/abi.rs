//! ABI version detection: a filter exports an empty marker function naming its ABI.

use wasmtime::Module;

/// The Proxy-Wasm ABI a filter was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_1_0`
    V0_1_0,
    /// `proxy_abi_version_0_2_0`
    V0_2_0,
    /// `proxy_abi_version_0_2_1`
    V0_2_1,
}

/// The marker exports, newest first.
const MARKERS: [(&str, AbiVersion); 3] = [
    ("proxy_abi_version_0_2_1", AbiVersion::V0_2_1),
    ("proxy_abi_version_0_2_0", AbiVersion::V0_2_0),
    ("proxy_abi_version_0_1_0", AbiVersion::V0_1_0),
];

/// Detects the ABI from the module's exports, or explains what was found instead.
pub fn detect(module: &Module) -> Result<AbiVersion, String> {
    if let Some((_, version)) = MARKERS
        .iter()
        .find(|(name, _)| module.get_export(name).is_some())
    {
        return Ok(*version);
    }
    let found: Vec<&str> = module
        .exports()
        .map(|e| e.name())
        .filter(|n| n.starts_with("proxy_abi"))
        .collect();
    Err(if found.is_empty() {
        "exports no proxy_abi_version_* marker: not a Proxy-Wasm filter".to_string()
    } else {
        format!(
            "exports {}, an ABI pier does not support (0.1.0, 0.2.0, 0.2.1)",
            found.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(exports: &str) -> Module {
        let engine = wasmtime::Engine::default();
        Module::new(&engine, format!("(module {exports})")).unwrap()
    }

    #[test]
    fn versions_by_marker() {
        for (marker, want) in MARKERS {
            let m = module(&format!("(func (export \"{marker}\"))"));
            assert_eq!(detect(&m), Ok(want));
        }
        assert!(
            detect(&module(""))
                .unwrap_err()
                .contains("not a Proxy-Wasm filter")
        );
        let e = detect(&module("(func (export \"proxy_abi_version_9_9_9\"))")).unwrap_err();
        assert!(e.contains("proxy_abi_version_9_9_9"), "{e}");
    }
}
