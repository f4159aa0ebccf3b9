//! Tick timers: `proxy_set_tick_period_milliseconds` on a root context makes the host call
//! `proxy_on_tick` on that VM every period, until the period is set to 0 or the VM is replaced.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use crate::pool::Entered;
use crate::status::Status;
use crate::vm::{Home, ROOT_CONTEXT, VmState};

/// The shortest tick period honoured.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Adds `proxy_set_tick_period_milliseconds`.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, VmState>, period: i32| -> i32 {
            let period = period as u32;
            c.data_mut().tick_period =
                (period > 0).then(|| Duration::from_millis(period.into()).max(MIN_PERIOD));
            Status::Ok.into()
        },
    )?;
    Ok(())
}

/// Starts the tick task of the VM at `home`. Returns false when there is no runtime to run it
/// on (outside a server), so a later entry tries again.
pub fn spawn(home: Home) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    runtime.spawn(async move {
        loop {
            // Read the period each round: the filter may change it from any callback.
            let Some(slot) = home.slot.upgrade() else {
                return;
            };
            let period = {
                let mut state = slot.lock();
                if state.generation != home.generation {
                    return;
                }
                let Some(vm) = state.vm.as_mut() else { return };
                match vm.state().tick_period {
                    Some(period) => period,
                    None => {
                        vm.state().ticking = false;
                        return;
                    }
                }
            };
            drop(slot);
            tokio::time::sleep(period).await;
            let Some(slot) = home.slot.upgrade() else {
                return;
            };
            let ran = slot.enter(Some(home.generation), |vm, _| {
                if vm.has("proxy_on_tick") {
                    vm.call::<i32, ()>(ROOT_CONTEXT, "proxy_on_tick", ROOT_CONTEXT)?;
                }
                Ok(())
            });
            if !matches!(ran, Entered::Ran(())) {
                return;
            }
        }
    });
    true
}
