//! The Proxy-Wasm host functions of module `env` for logging, time, header maps, buffers,
//! properties and the stream itself (local responses, continue, close, effective context).
//! Shared data and queues, metrics, callouts and timers have their own files.

use wasmtime::{Caller, FuncType, Linker, Val, ValType};

use crate::context::Direction;
use crate::memory::{give, read, write, write_u32};
use crate::pairs;
use crate::status::{Status, code};
use crate::vm::{MapId, VmState};

/// Adds every hostcall of this file to `linker`.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    link_log_and_time(linker)?;
    link_maps(linker)?;
    link_buffers(linker)?;
    link_stream(linker)?;
    link_properties(linker)?;
    unimplemented(linker)?;
    Ok(())
}

/// Hostcalls in the ABI that pier answers UNIMPLEMENTED (SDKs handle that status): gRPC, which
/// no one has asked for yet, and foreign functions, of which pier offers none. By name and
/// number of i32 parameters.
const UNIMPLEMENTED: [(&str, usize); 6] = [
    ("proxy_grpc_call", 12),
    ("proxy_grpc_stream", 9),
    ("proxy_grpc_send", 4),
    ("proxy_grpc_cancel", 1),
    ("proxy_grpc_close", 1),
    ("proxy_call_foreign_function", 6),
];

fn unimplemented(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    for (name, params) in UNIMPLEMENTED {
        let ty = FuncType::new(linker.engine(), vec![ValType::I32; params], [ValType::I32]);
        linker.func_new("env", name, ty, |_, _, results| {
            results[0] = Val::I32(Status::Unimplemented.into());
            Ok(())
        })?;
    }
    Ok(())
}

fn link_log_and_time(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, VmState>, level: i32, ptr: i32, len: i32| -> i32 {
            code((|| {
                if !(0..=5).contains(&level) {
                    return Err(Status::BadArgument);
                }
                let message = read(&mut c, ptr, len)?;
                let message = String::from_utf8_lossy(&message);
                let filter = &*c.data().root().name.clone();
                match level {
                    0 => tracing::trace!(target: "pier::filter", filter, "{message}"),
                    1 => tracing::debug!(target: "pier::filter", filter, "{message}"),
                    2 => tracing::info!(target: "pier::filter", filter, "{message}"),
                    3 => tracing::warn!(target: "pier::filter", filter, "{message}"),
                    _ => tracing::error!(target: "pier::filter", filter, "{message}"),
                }
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Caller<'_, VmState>, ret: i32| -> i32 {
            // The most verbose level pier's log filter lets through for filters.
            let level = if tracing::enabled!(target: "pier::filter", tracing::Level::TRACE) {
                0
            } else if tracing::enabled!(target: "pier::filter", tracing::Level::DEBUG) {
                1
            } else if tracing::enabled!(target: "pier::filter", tracing::Level::INFO) {
                2
            } else if tracing::enabled!(target: "pier::filter", tracing::Level::WARN) {
                3
            } else {
                4
            };
            code(write_u32(&mut c, ret, level))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, VmState>, ret: i32| -> i32 {
            code(write(&mut c, ret, &now_nanos().to_le_bytes()))
        },
    )?;
    Ok(())
}

fn serialized(c: &Caller<'_, VmState>, map: i32) -> Result<Vec<u8>, Status> {
    let pairs = c.data().map(MapId::from_abi(map)?)?;
    Ok(pairs::serialize(
        pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    ))
}

fn link_maps(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, VmState>, map: i32, ret_ptr: i32, ret_len: i32| -> i32 {
            code((|| {
                let bytes = serialized(&c, map)?;
                give(&mut c, &bytes, ret_ptr, ret_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: Caller<'_, VmState>, map: i32, ret: i32| -> i32 {
            code((|| {
                let size = serialized(&c, map)?.len() as u32;
                write_u32(&mut c, ret, size)
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
                let value = c
                    .data()
                    .map(MapId::from_abi(map)?)?
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .ok_or(Status::NotFound)?;
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
                let pairs = c.data_mut().map_mut(MapId::from_abi(map)?)?;
                room(pairs, &key, &value)?;
                pairs.push((key, value));
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
                let pairs = c.data_mut().map_mut(MapId::from_abi(map)?)?;
                room(pairs, &key, &value)?;
                // The first occurrence keeps its place (pseudo-headers stay first); others go.
                match pairs.iter().position(|(k, _)| *k == key) {
                    Some(at) => {
                        pairs[at].1 = value;
                        let mut i = 0;
                        pairs.retain(|(k, _)| {
                            i += 1;
                            i - 1 == at || *k != key
                        });
                    }
                    None => pairs.push((key, value)),
                }
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
                    .map_mut(MapId::from_abi(map)?)?
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
                *c.data_mut().map_mut(MapId::from_abi(map)?)? =
                    parsed.into_iter().map(|(k, v)| (lower(k), v)).collect();
                Ok(())
            })())
        },
    )?;
    Ok(())
}

fn link_buffers(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
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
                let slice = {
                    let data = c.data().buffer(buffer)?;
                    let start = (start as u32 as usize).min(data.len());
                    let end = start.saturating_add(max as u32 as usize).min(data.len());
                    data[start..end].to_vec()
                };
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
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, VmState>,
         buffer: i32,
         start: i32,
         size: i32,
         ptr: i32,
         len: i32|
         -> i32 {
            code((|| {
                let value = read(&mut c, ptr, len)?;
                let max = c.data().root().config.max_buffered;
                let data = c.data_mut().buffer_mut(buffer)?;
                // Replaces [start, start + size): (0, len) replaces everything, (0, 0) prepends,
                // and a start at or past the end appends (Envoy's reading, which the Go SDK
                // relies on).
                let start = (start as u32 as usize).min(data.len());
                let end = start.saturating_add(size as u32 as usize).min(data.len());
                if data.len() - (end - start) + value.len() > max {
                    return Err(Status::BadArgument);
                }
                data.splice(start..end, value);
                Ok(())
            })())
        },
    )?;
    // ABI 0.1.0 reads the plugin configuration this way.
    linker.func_wrap(
        "env",
        "proxy_get_configuration",
        |mut c: Caller<'_, VmState>, ret_ptr: i32, ret_len: i32| -> i32 {
            let config = c.data().root().config.configuration.clone();
            code(give(&mut c, &config, ret_ptr, ret_len))
        },
    )?;
    Ok(())
}

/// Resumes the effective stream's paused `direction`.
fn resume(c: &mut Caller<'_, VmState>, direction: Direction) -> Result<(), Status> {
    let stream = c.data_mut().stream_mut()?;
    if stream.paused == Some(direction) {
        stream.paused = None;
        stream.wake.notify_one();
    } else {
        stream.continued = Some(direction);
    }
    Ok(())
}

fn direction(stream_type: i32) -> Result<Direction, Status> {
    match stream_type {
        0 => Ok(Direction::Request),
        1 => Ok(Direction::Response),
        // TCP streams (2, 3) do not exist in an HTTP server.
        _ => Err(Status::BadArgument),
    }
}

fn link_stream(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
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
                    .filter(|s| (200..=599).contains(s))
                    .ok_or(Status::BadArgument)?;
                let body = read(&mut c, body_ptr, body_len)?;
                let headers = if headers_len == 0 {
                    Vec::new()
                } else {
                    pairs::deserialize(&read(&mut c, headers_ptr, headers_len)?)
                        .ok_or(Status::ParseFailure)?
                        .into_iter()
                        .map(|(k, v)| (lower(k), v))
                        .collect()
                };
                // Once the response head is out, this ends the response instead (SDKs treat a
                // failed local response as fatal).
                let stream = c.data_mut().stream_mut()?;
                stream.local_response = Some(crate::LocalResponse {
                    status,
                    headers,
                    body,
                });
                stream.paused = None;
                stream.wake.notify_one();
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Caller<'_, VmState>, stream_type: i32| -> i32 {
            code((|| resume(&mut c, direction(stream_type)?))())
        },
    )?;
    // ABI 0.1.0.
    linker.func_wrap(
        "env",
        "proxy_continue_request",
        |mut c: Caller<'_, VmState>| -> i32 { code(resume(&mut c, Direction::Request)) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_response",
        |mut c: Caller<'_, VmState>| -> i32 { code(resume(&mut c, Direction::Response)) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: Caller<'_, VmState>, stream_type: i32| -> i32 {
            code((|| {
                direction(stream_type)?;
                let stream = c.data_mut().stream_mut()?;
                stream.closed = true;
                stream.paused = None;
                stream.wake.notify_one();
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_, VmState>, context: i32| -> i32 {
            let state = c.data_mut();
            if state.is_root(context) || state.streams.contains_key(&context) {
                state.effective = context;
                Status::Ok.into()
            } else {
                Status::BadArgument.into()
            }
        },
    )?;
    // A root context finishing its shutdown after `proxy_on_done` returned false. pier tears
    // VMs down only at exit or on replacement, so there is nothing to wait for.
    linker.func_wrap("env", "proxy_done", |_: Caller<'_, VmState>| -> i32 {
        Status::Ok.into()
    })?;
    Ok(())
}

fn link_properties(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
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
        "proxy_set_property",
        |mut c: Caller<'_, VmState>, path_ptr: i32, path_len: i32, vp: i32, vl: i32| -> i32 {
            code((|| {
                let (path, value) = (read(&mut c, path_ptr, path_len)?, read(&mut c, vp, vl)?);
                if path.is_empty() || path.len() > 1 << 16 || value.len() > 1 << 16 {
                    return Err(Status::BadArgument);
                }
                let state = c.data_mut();
                let properties = match state.streams.get_mut(&state.effective) {
                    Some(stream) => &mut stream.properties,
                    None => &mut state.root_properties,
                };
                if properties.len() >= 1024 && !properties.contains_key(&path) {
                    return Err(Status::BadArgument);
                }
                properties.insert(path, value);
                Ok(())
            })())
        },
    )?;
    Ok(())
}

/// Whether one more pair fits the map's caps (those the host enforces on maps it receives).
fn room(pairs: &crate::Pairs, key: &[u8], value: &[u8]) -> Result<(), Status> {
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    if pairs.len() >= pairs::MAX_PAIRS
        || size + key.len() + value.len() + 10 > pairs::MAX_SERIALIZED
    {
        return Err(Status::BadArgument);
    }
    Ok(())
}

fn lower(mut name: Vec<u8>) -> Vec<u8> {
    name.make_ascii_lowercase();
    name
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
