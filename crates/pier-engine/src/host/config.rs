//! `wasi:config/store` (`wasi:config@0.2.0-rc.1`, as wasmtime-wasi-config serves it): a
//! component's own variables, resolved once when the app starts (`pier_config`'s
//! `[variables]`), shared by every store of the component, never another component's.

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use super::HostState;

/// The variables of one component.
#[derive(Default, Clone)]
pub struct ConfigState(Arc<WasiConfigVariables>);

impl ConfigState {
    /// The component's `variables`: name and value.
    pub fn new<'a>(variables: impl IntoIterator<Item = (&'a String, &'a String)>) -> ConfigState {
        ConfigState(Arc::new(
            variables
                .into_iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        ))
    }

    fn view(&self) -> WasiConfig<'_> {
        WasiConfig::new(&self.0)
    }
}

impl std::fmt::Debug for ConfigState {
    /// Names nothing: values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigState(..)")
    }
}

/// Links `wasi:config/store`.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi_config::add_to_linker(linker, |state: &mut HostState| state.config.view())
}
