//! The WASI preview1 calls filters make (`wasi_snapshot_preview1`, or `wasi_unstable` for old
//! SDKs): stdout and stderr to the log, clocks, random, the environment variables the filter was
//! given (Envoy's `environment_variables`; none by default), an empty argument list, and
//! `proc_exit` as a trap. Filters get no files or sockets.

use wasmtime::{Caller, Linker};

use crate::memory::{read, write, write_u32};
use crate::vm::VmState;

const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const ESPIPE: i32 = 70;

/// The filter's environment as `NAME=VALUE\0` entries: only the variables it was given.
fn environ(state: &VmState) -> Vec<Vec<u8>> {
    state
        .code
        .config
        .env
        .iter()
        .map(|(name, value)| format!("{name}={value}\0").into_bytes())
        .collect()
}

/// Adds the WASI subset under both module names.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        link_module(linker, module)?;
    }
    Ok(())
}

/// The WASI preview1 calls filters make: stdout/stderr to the log, clocks, random, the granted
/// environment, an empty argument list, and `proc_exit` as a trap.
fn link_module(linker: &mut Linker<VmState>, module: &str) -> wasmtime::Result<()> {
    linker.func_wrap(module, "fd_write", |mut c: Caller<'_, VmState>, fd: i32, iovs: i32, count: i32, ret: i32| -> i32 {
        let result = (|| {
            // What one call may put in the log; the rest is cut (but reported written, so the
            // filter does not retry it).
            const MAX_LINE: usize = 64 << 10;
            let mut text = Vec::new();
            let mut written: u32 = 0;
            for i in 0..count {
                let iov = read(&mut c, iovs.wrapping_add(i.wrapping_mul(8)), 8)?;
                let ptr = i32::from_le_bytes(iov[..4].try_into().unwrap());
                let len = i32::from_le_bytes(iov[4..].try_into().unwrap());
                written = written.saturating_add(len as u32);
                let room = MAX_LINE.saturating_sub(text.len()).min(len as u32 as usize);
                if room > 0 {
                    text.extend(read(&mut c, ptr, room as i32)?);
                }
            }
            let filter = c.data().root().name.clone();
            let line = String::from_utf8_lossy(&text);
            let line = line.trim_end();
            match fd {
                1 => tracing::info!(target: "pier::filter", filter = &*filter, stream = "stdout", "{line}"),
                2 => tracing::error!(target: "pier::filter", filter = &*filter, stream = "stderr", "{line}"),
                _ => return Err(EBADF),
            }
            write_u32(&mut c, ret, written).map_err(|_| EFAULT)
        })();
        match result {
            Ok(()) => 0,
            Err(errno) => errno,
        }
    })?;
    linker.func_wrap(
        module,
        "clock_time_get",
        |mut c: Caller<'_, VmState>, _id: i32, _precision: i64, ret: i32| -> i32 {
            if write(&mut c, ret, &crate::hostcalls::now_nanos().to_le_bytes()).is_ok() {
                0
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        module,
        "random_get",
        |mut c: Caller<'_, VmState>, ptr: i32, len: i32| -> i32 {
            if len as u32 > 1 << 20 {
                return 28; // EINVAL: more than any filter needs at once
            }
            let mut bytes = vec![0u8; len as u32 as usize];
            if getrandom::fill(&mut bytes).is_err() {
                return 29; // EIO
            }
            if write(&mut c, ptr, &bytes).is_ok() {
                0
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        module,
        "environ_sizes_get",
        |mut c: Caller<'_, VmState>, count: i32, size: i32| -> i32 {
            let env = environ(c.data());
            let bytes: usize = env.iter().map(Vec::len).sum();
            if write_u32(&mut c, count, env.len() as u32).is_ok()
                && write_u32(&mut c, size, bytes as u32).is_ok()
            {
                0
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        module,
        "environ_get",
        |mut c: Caller<'_, VmState>, pointers: i32, buffer: i32| -> i32 {
            let env = environ(c.data());
            let mut at = buffer;
            for (i, entry) in env.iter().enumerate() {
                let slot = pointers.wrapping_add((i as i32).wrapping_mul(4));
                if write_u32(&mut c, slot, at as u32).is_err() || write(&mut c, at, entry).is_err()
                {
                    return EFAULT;
                }
                at = at.wrapping_add(entry.len() as i32);
            }
            0
        },
    )?;
    linker.func_wrap(
        module,
        "args_sizes_get",
        |mut c: Caller<'_, VmState>, count: i32, size: i32| -> i32 {
            if write_u32(&mut c, count, 0).is_ok() && write_u32(&mut c, size, 0).is_ok() {
                0
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        module,
        "args_get",
        |_: Caller<'_, VmState>, _: i32, _: i32| -> i32 { 0 },
    )?;
    // stdio descriptors are character devices; anything else is not open.
    linker.func_wrap(
        module,
        "fd_fdstat_get",
        |mut c: Caller<'_, VmState>, fd: i32, ret: i32| -> i32 {
            if !(0..=2).contains(&fd) {
                return EBADF;
            }
            let mut stat = [0u8; 24];
            stat[0] = 2; // character device
            if write(&mut c, ret, &stat).is_ok() {
                0
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        module,
        "fd_close",
        |_: Caller<'_, VmState>, _fd: i32| -> i32 { EBADF },
    )?;
    linker.func_wrap(
        module,
        "fd_seek",
        |_: Caller<'_, VmState>, _fd: i32, _offset: i64, _whence: i32, _ret: i32| -> i32 { ESPIPE },
    )?;
    linker.func_wrap(module, "sched_yield", |_: Caller<'_, VmState>| -> i32 { 0 })?;
    linker.func_wrap(
        module,
        "proc_exit",
        |_: Caller<'_, VmState>, code: i32| -> wasmtime::Result<()> {
            wasmtime::bail!("the filter called proc_exit({code})")
        },
    )?;
    Ok(())
}
