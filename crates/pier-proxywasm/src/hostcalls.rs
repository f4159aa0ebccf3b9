//! The host functions a filter imports: from `env` (the Proxy-Wasm ABI) and the WASI preview1
//! subset filters use (`wasi_snapshot_preview1`, or `wasi_unstable` for old SDKs). Imports this
//! host does not implement yet are linked as traps (see `Vm::new`).

use wasmtime::{Caller, Linker};

use crate::memory::{give, read, write, write_u32};
use crate::pairs;
use crate::status::{Status, code};
use crate::vm::{MapId, VmState};

/// Adds every implemented hostcall to `linker`.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, VmState>, level: i32, ptr: i32, len: i32| -> i32 {
            code((|| {
                let message = read(&mut c, ptr, len)?;
                let message = String::from_utf8_lossy(&message);
                let filter = c.data().name.clone();
                match level {
                    0 | 1 => {
                        tracing::debug!(target: "pier::filter", filter = &*filter, "{message}")
                    }
                    2 => tracing::info!(target: "pier::filter", filter = &*filter, "{message}"),
                    3 => tracing::warn!(target: "pier::filter", filter = &*filter, "{message}"),
                    4 | 5 => {
                        tracing::error!(target: "pier::filter", filter = &*filter, "{message}")
                    }
                    _ => return Err(Status::BadArgument),
                }
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Caller<'_, VmState>, ret: i32| -> i32 {
            // Info: debug/trace messages are filtered by pier's own log filter anyway.
            code(write_u32(&mut c, ret, 2))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, VmState>, ret: i32| -> i32 {
            code(write(&mut c, ret, &now_nanos().to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, VmState>, map: i32, ret_ptr: i32, ret_len: i32| -> i32 {
            code((|| {
                let bytes = {
                    let pairs = c.data().map(map_id(map)?)?;
                    pairs::serialize(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
                };
                give(&mut c, &bytes, ret_ptr, ret_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: Caller<'_, VmState>, map: i32, ret: i32| -> i32 {
            code((|| {
                let size = {
                    let pairs = c.data().map(map_id(map)?)?;
                    pairs::serialize(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).len()
                };
                write_u32(&mut c, ret, size as u32)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, VmState>,
         map: i32,
         kp: i32,
         kl: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> i32 {
            code((|| {
                let key = lower(read(&mut c, kp, kl)?);
                let value = {
                    let pairs = c.data().map(map_id(map)?)?;
                    pairs
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.clone())
                        .ok_or(Status::NotFound)?
                };
                give(&mut c, &value, ret_ptr, ret_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            code((|| {
                let (key, value) = (lower(read(&mut c, kp, kl)?), read(&mut c, vp, vl)?);
                c.data_mut().map_mut(map_id(map)?)?.push((key, value));
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            code((|| {
                let (key, value) = (lower(read(&mut c, kp, kl)?), read(&mut c, vp, vl)?);
                let pairs = c.data_mut().map_mut(map_id(map)?)?;
                pairs.retain(|(k, _)| *k != key);
                pairs.push((key, value));
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, kp: i32, kl: i32| -> i32 {
            code((|| {
                let key = lower(read(&mut c, kp, kl)?);
                c.data_mut()
                    .map_mut(map_id(map)?)?
                    .retain(|(k, _)| *k != key);
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, VmState>, map: i32, ptr: i32, len: i32| -> i32 {
            code((|| {
                let bytes = read(&mut c, ptr, len)?;
                let parsed = pairs::deserialize(&bytes).ok_or(Status::ParseFailure)?;
                *c.data_mut().map_mut(map_id(map)?)? =
                    parsed.into_iter().map(|(k, v)| (lower(k), v)).collect();
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, VmState>,
         status: i32,
         _details_ptr: i32,
         _details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc: i32|
         -> i32 {
            code((|| {
                let status = u16::try_from(status)
                    .ok()
                    .filter(|s| (100..=999).contains(s))
                    .ok_or(Status::BadArgument)?;
                let body = read(&mut c, body_ptr, body_len)?;
                let headers = if headers_len == 0 {
                    Vec::new()
                } else {
                    pairs::deserialize(&read(&mut c, headers_ptr, headers_len)?)
                        .ok_or(Status::ParseFailure)?
                };
                let stream = c.data_mut().stream.as_mut().ok_or(Status::BadArgument)?;
                if stream.response_started {
                    return Err(Status::BadArgument);
                }
                stream.local_response = Some(crate::LocalResponse {
                    status,
                    headers,
                    body,
                });
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, VmState>,
         path_ptr: i32,
         path_len: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> i32 {
            code((|| {
                let path = read(&mut c, path_ptr, path_len)?;
                let value = c.data().property(&path).ok_or(Status::NotFound)?;
                give(&mut c, &value, ret_ptr, ret_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, VmState>,
         buffer: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> i32 {
            code((|| {
                let data = c.data().buffer(buffer)?;
                let start = (start as u32 as usize).min(data.len());
                let end = start.saturating_add(max as u32 as usize).min(data.len());
                let slice = data[start..end].to_vec();
                give(&mut c, &slice, ret_ptr, ret_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: Caller<'_, VmState>, buffer: i32, ret_len: i32, ret_flags: i32| -> i32 {
            code((|| {
                let len = c.data().buffer(buffer)?.len() as u32;
                write_u32(&mut c, ret_len, len)?;
                write_u32(&mut c, ret_flags, 0)
            })())
        },
    )?;
    // Streams are never paused by this host yet (see `Filter`), so continuing is always fine.
    for name in [
        "proxy_continue_stream",
        "proxy_continue_request",
        "proxy_continue_response",
    ] {
        linker.func_wrap("env", name, |_: Caller<'_, VmState>, _stream: i32| -> i32 {
            Status::Ok.into()
        })?;
    }
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: Caller<'_, VmState>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> i32 {
            Status::Unimplemented.into()
        },
    )?;

    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        link_wasi(linker, module)?;
    }
    Ok(())
}

/// The WASI preview1 calls filters make: stdout/stderr to the log, clocks, random, an empty
/// environment and argument list, and `proc_exit` as a trap.
fn link_wasi(linker: &mut Linker<VmState>, module: &str) -> wasmtime::Result<()> {
    linker.func_wrap(module, "fd_write", |mut c: Caller<'_, VmState>, fd: i32, iovs: i32, count: i32, ret: i32| -> i32 {
        let result = (|| {
            let mut text = Vec::new();
            for i in 0..count {
                let iov = read(&mut c, iovs.wrapping_add(i.wrapping_mul(8)), 8)?;
                let ptr = i32::from_le_bytes(iov[..4].try_into().unwrap());
                let len = i32::from_le_bytes(iov[4..].try_into().unwrap());
                text.extend(read(&mut c, ptr, len)?);
            }
            let filter = c.data().name.clone();
            let line = String::from_utf8_lossy(&text);
            let line = line.trim_end();
            match fd {
                1 => tracing::info!(target: "pier::filter", filter = &*filter, stream = "stdout", "{line}"),
                2 => tracing::error!(target: "pier::filter", filter = &*filter, stream = "stderr", "{line}"),
                _ => return Err(8), // EBADF
            }
            write_u32(&mut c, ret, text.len() as u32).map_err(|_| 21) // EFAULT
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
            if write(&mut c, ret, &now_nanos().to_le_bytes()).is_ok() {
                0
            } else {
                21
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
                21
            }
        },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(
            module,
            name,
            |mut c: Caller<'_, VmState>, count: i32, size: i32| -> i32 {
                if write_u32(&mut c, count, 0).is_ok() && write_u32(&mut c, size, 0).is_ok() {
                    0
                } else {
                    21
                }
            },
        )?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(
            module,
            name,
            |_: Caller<'_, VmState>, _: i32, _: i32| -> i32 { 0 },
        )?;
    }
    linker.func_wrap(
        module,
        "proc_exit",
        |_: Caller<'_, VmState>, code: i32| -> wasmtime::Result<()> {
            wasmtime::bail!("the filter called proc_exit({code})")
        },
    )?;
    Ok(())
}

fn map_id(map: i32) -> Result<MapId, Status> {
    match map {
        0 => Ok(MapId::RequestHeaders),
        2 => Ok(MapId::ResponseHeaders),
        _ => Err(Status::BadArgument),
    }
}

fn lower(mut name: Vec<u8>) -> Vec<u8> {
    name.make_ascii_lowercase();
    name
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
