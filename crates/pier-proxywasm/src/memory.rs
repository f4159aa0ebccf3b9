//! Guest memory access for hostcalls: every pointer and length is bounds-checked, and data is
//! returned by calling the guest's allocator and writing (pointer, length) into its out-slots.

use wasmtime::{Caller, Extern, Memory, TypedFunc};

use crate::status::Status;
use crate::vm::VmState;

fn memory(caller: &mut Caller<'_, VmState>) -> Result<Memory, Status> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(Status::InternalFailure),
    }
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub fn read(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = memory.data(&caller);
    let end = ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    data.get(ptr..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Writes `bytes` at `ptr` in guest memory.
pub fn write(caller: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = memory(caller)?;
    let ptr = ptr as u32 as usize;
    let end = ptr
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    let data = memory.data_mut(caller);
    data.get_mut(ptr..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian u32 at `ptr`.
pub fn write_u32(caller: &mut Caller<'_, VmState>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocates, and stores its address and length at
/// `ret_ptr` / `ret_len`. May re-enter the guest (its allocator).
pub fn give(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Status> {
    // Check the out-slots before allocating, so a bad pointer does not leak guest memory.
    let size = memory(caller)?.data_size(&caller);
    for slot in [ret_ptr, ret_len] {
        if (slot as u32 as usize)
            .checked_add(4)
            .is_none_or(|end| end > size)
        {
            return Err(Status::InvalidMemoryAccess);
        }
    }
    let addr = if bytes.is_empty() {
        0
    } else {
        let alloc = allocator(caller)?;
        let addr = match alloc.call(&mut *caller, bytes.len() as i32) {
            Ok(addr) => addr,
            Err(trap) => {
                // The guest trapped inside its allocator: its heap may be broken, so the
                // callback ends as a trap (and the VM is replaced), not as a status.
                caller.data_mut().trap = Some(trap);
                return Err(Status::InternalFailure);
            }
        };
        if addr == 0 {
            return Err(Status::InternalFailure);
        }
        write(caller, addr, bytes)?;
        addr
    };
    write_u32(caller, ret_ptr, addr as u32)?;
    write_u32(caller, ret_len, bytes.len() as u32)
}

fn allocator(caller: &mut Caller<'_, VmState>) -> Result<TypedFunc<i32, i32>, Status> {
    for name in ["proxy_on_memory_allocate", "malloc"] {
        if let Some(Extern::Func(f)) = caller.get_export(name) {
            return f
                .typed::<i32, i32>(&caller)
                .map_err(|_| Status::InternalFailure);
        }
    }
    Err(Status::InternalFailure)
}
