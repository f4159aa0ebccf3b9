//! Tick timers: `proxy_set_tick_period_milliseconds` on a root context makes the host call
//! `proxy_on_tick` for that root context every period, until the period is set to 0 or the VM is
//! replaced. Each plugin of a shared VM has its own period.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use crate::pool::Entered;
use crate::status::Status;
use crate::vm::{Home, VmState};

/// The shortest tick period honoured.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Adds `proxy_set_tick_period_milliseconds`.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, VmState>, period: i32| -> i32 {
            let period = period as u32;
            let state = c.data_mut();
            let index = state.root().context as usize - 1;
            state.tick_periods[index] =
                (period > 0).then(|| Duration::from_millis(period.into()).max(MIN_PERIOD));
            Status::Ok.into()
        },
    )?;
    Ok(())
}

/// Starts the tick task of root context `root` in the VM at `home`. Returns false when there is
/// no runtime to run it on (outside a server), so a later entry tries again.
pub fn spawn(home: Home, root: i32) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let index = root as usize - 1;
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
                match vm.state().tick_periods[index] {
                    Some(period) => period,
                    None => {
                        vm.state().ticking[index] = false;
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
                    vm.call::<i32, ()>(root, "proxy_on_tick", root)?;
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
