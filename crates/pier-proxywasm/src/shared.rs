//! Shared data (a key-value store with compare-and-swap) and shared queues: what VMs of a filter,
//! and filters, use to talk to each other. Keys and queues are scoped by VM id (the filter's
//! name), as in Envoy; `proxy_resolve_shared_queue` reaches another VM id's queue by name.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use wasmtime::{Caller, Linker};

use crate::memory::{give, read, write_u32};
use crate::metrics::Metrics;
use crate::pool::Entered;
use crate::status::{Status, code};
use crate::vm::{Home, VmState};

/// Largest value stored in shared data or a queue.
const MAX_VALUE: usize = 1 << 20;
/// Most values waiting in one queue; enqueueing more fails with INTERNAL_FAILURE.
const MAX_QUEUED: usize = 10_000;
/// Most keys in shared data, over all VM ids.
const MAX_KEYS: usize = 100_000;
/// Largest key or queue name.
const MAX_NAME: usize = 64 << 10;
/// Most queues, over all VM ids.
const MAX_QUEUES: usize = 10_000;

/// Shared data: (VM id, key) to (value, CAS token).
type Data = HashMap<(Arc<str>, Vec<u8>), (Vec<u8>, u32)>;

/// What all filters of a server share.
pub struct Shared {
    data: Mutex<Data>,
    queues: Mutex<Queues>,
    /// Bytes held in shared data (keys and values) and queues (values), and the most they may.
    held: AtomicUsize,
    max_held: usize,
    /// The log has said the budget is spent (again only once there was room meanwhile).
    told_full: AtomicBool,
    /// Metrics the filters define.
    pub metrics: Metrics,
}

impl Default for Shared {
    /// Shared data and queues of at most 64 MiB.
    fn default() -> Self {
        Shared::new(64 << 20)
    }
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(Arc<str>, Vec<u8>), u32>,
    queues: Vec<Queue>,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    /// The root contexts that registered the queue, one per pool slot and plugin: told when
    /// an item arrives (the first whose VM is still the one that registered).
    owners: Vec<Owner>,
    /// A notification is on its way: more items do not need another.
    notifying: bool,
}

/// A root context that registered a queue, in the VM living at `home`.
#[derive(Clone)]
struct Owner {
    home: Home,
    root: i32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Shared data and queues holding at most `max_held` bytes in all (keys and values): past
    /// it a write fails with INTERNAL_FAILURE, so no filter can take the host's memory.
    pub fn new(max_held: usize) -> Shared {
        Shared {
            data: Mutex::default(),
            queues: Mutex::default(),
            held: AtomicUsize::new(0),
            max_held,
            told_full: AtomicBool::new(false),
            metrics: Metrics::default(),
        }
    }

    /// Makes room for `grow` more bytes (after `shrink` fewer), if the budget has it.
    fn reserve(&self, grow: usize, shrink: usize) -> Result<(), Status> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let next = held.saturating_sub(shrink).checked_add(grow)?;
                (next <= self.max_held || grow <= shrink).then_some(next)
            })
            .map(|_| {
                if grow > 0 && self.told_full.load(Ordering::Relaxed) {
                    self.told_full.store(false, Ordering::Relaxed);
                }
            })
            .map_err(|_| {
                if !self.told_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "filter shared data and queues are full ({} bytes, \
                         --filter-shared-size): writes fail until there is room",
                        self.max_held
                    );
                }
                Status::InternalFailure
            })
    }

    /// A value and its CAS token.
    pub fn get(&self, vm: &Arc<str>, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        lock(&self.data).get(&(vm.clone(), key.to_vec())).cloned()
    }

    /// Stores a value; with a non-zero `cas`, only if the key's token still equals it.
    pub fn set(&self, vm: &Arc<str>, key: Vec<u8>, value: Vec<u8>, cas: u32) -> Result<(), Status> {
        if value.len() > MAX_VALUE || key.len() > MAX_NAME {
            return Err(Status::BadArgument);
        }
        let mut data = lock(&self.data);
        let len = data.len();
        match data.get_mut(&(vm.clone(), key.clone())) {
            Some((_, token)) if cas != 0 && cas != *token => Err(Status::CasMismatch),
            Some(entry) => {
                self.reserve(value.len(), entry.0.len())?;
                let token = entry.1.wrapping_add(1).max(1);
                *entry = (value, token);
                Ok(())
            }
            None if len >= MAX_KEYS => Err(Status::InternalFailure),
            None => {
                self.reserve(key.len() + value.len(), 0)?;
                data.insert((vm.clone(), key), (value, 1));
                Ok(())
            }
        }
    }

    fn register(&self, vm: &Arc<str>, name: Vec<u8>, owner: Owner) -> Result<u32, Status> {
        if name.len() > MAX_NAME {
            return Err(Status::BadArgument);
        }
        let mut queues = lock(&self.queues);
        let queues = &mut *queues;
        let key = (vm.clone(), name);
        let id = match queues.by_name.get(&key) {
            Some(&id) => id,
            None if queues.queues.len() >= MAX_QUEUES => return Err(Status::InternalFailure),
            None => {
                self.reserve(key.1.len(), 0)?;
                queues.queues.push(Queue {
                    items: VecDeque::new(),
                    owners: Vec::new(),
                    notifying: false,
                });
                let id = queues.queues.len() as u32;
                queues.by_name.insert(key, id);
                id
            }
        };
        let queue = &mut queues.queues[id as usize - 1];
        // A slot's new VM replaces its old one as an owner (for the same plugin).
        queue.owners.retain(|o| {
            o.home.slot.strong_count() > 0
                && !(Weak::ptr_eq(&o.home.slot, &owner.home.slot) && o.root == owner.root)
        });
        queue.owners.push(owner);
        Ok(id)
    }

    fn resolve(&self, vm: &Arc<str>, name: Vec<u8>) -> Option<u32> {
        lock(&self.queues).by_name.get(&(vm.clone(), name)).copied()
    }

    fn enqueue(self: &Arc<Self>, id: u32, value: Vec<u8>) -> Result<(), Status> {
        if value.len() > MAX_VALUE {
            return Err(Status::BadArgument);
        }
        {
            let mut queues = lock(&self.queues);
            let queue = (id as usize)
                .checked_sub(1)
                .and_then(|i| queues.queues.get_mut(i))
                .ok_or(Status::NotFound)?;
            if queue.items.len() >= MAX_QUEUED {
                // A queue nobody drains keeps its newest items (SDKs treat a failed enqueue as
                // fatal).
                if let Some(old) = queue.items.pop_front() {
                    self.reserve(0, old.len())?;
                }
            }
            self.reserve(value.len(), 0)?;
            queue.items.push_back(value);
            if queue.notifying || queue.owners.is_empty() {
                return Ok(());
            }
            queue.notifying = true;
        }
        notify(self.clone(), id);
        Ok(())
    }

    fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut queues = lock(&self.queues);
        let queue = (id as usize)
            .checked_sub(1)
            .and_then(|i| queues.queues.get_mut(i))
            .ok_or(Status::NotFound)?;
        let value = queue.items.pop_front().ok_or(Status::Empty)?;
        self.reserve(0, value.len())?;
        Ok(value)
    }
}

/// Tells the queue's owner items arrived: `proxy_on_queue_ready` on its root context, from a
/// task (the enqueuing callback may be running on that very VM).
fn notify(shared: Arc<Shared>, id: u32) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let owners = {
            let mut queues = lock(&shared.queues);
            let queue = &mut queues.queues[id as usize - 1];
            // Items enqueued from here on get a notification of their own.
            queue.notifying = false;
            queue.owners.clone()
        };
        for owner in owners {
            let Some(slot) = owner.home.slot.upgrade() else {
                continue;
            };
            let root = owner.root;
            let told = slot.enter(Some(owner.home.generation), |vm, _| {
                if vm.has("proxy_on_queue_ready") {
                    vm.call::<(i32, i32), ()>(root, "proxy_on_queue_ready", (root, id as i32))?;
                }
                Ok(())
            });
            if let Entered::Ran(()) = told {
                return;
            }
        }
    });
}

/// Adds the shared data and queue hostcalls.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, VmState>,
         kp: i32,
         kl: i32,
         ret_ptr: i32,
         ret_len: i32,
         ret_cas: i32|
         -> i32 {
            code((|| {
                let key = read(&mut c, kp, kl)?;
                let code = c.data().code.clone();
                let (value, cas) = code.shared.get(&code.label, &key).ok_or(Status::NotFound)?;
                write_u32(&mut c, ret_cas, cas)?;
                give(&mut c, &value, ret_ptr, ret_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, VmState>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
            code((|| {
                let (key, value) = (read(&mut c, kp, kl)?, read(&mut c, vp, vl)?);
                let code = c.data().code.clone();
                code.shared.set(&code.label, key, value, cas as u32)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, VmState>, np: i32, nl: i32, ret: i32| -> i32 {
            code((|| {
                let name = read(&mut c, np, nl)?;
                let state = c.data();
                let (code, root) = (state.code.clone(), state.root().context);
                let owner = Owner {
                    home: state.home.clone(),
                    root,
                };
                let id = code.shared.register(&code.label, name, owner)?;
                write_u32(&mut c, ret, id)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, VmState>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> i32 {
            code((|| {
                let (vm_id, name) = (read(&mut c, vp, vl)?, read(&mut c, np, nl)?);
                let code = c.data().code.clone();
                // An empty VM id means the caller's own.
                let vm: Arc<str> = if vm_id.is_empty() {
                    code.label.clone()
                } else {
                    String::from_utf8_lossy(&vm_id).into()
                };
                let id = code.shared.resolve(&vm, name).ok_or(Status::NotFound)?;
                write_u32(&mut c, ret, id)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, VmState>, id: i32, vp: i32, vl: i32| -> i32 {
            code((|| {
                let value = read(&mut c, vp, vl)?;
                c.data().code.shared.enqueue(id as u32, value)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, VmState>, id: i32, ret_ptr: i32, ret_len: i32| -> i32 {
            code((|| {
                let value = c.data().code.shared.dequeue(id as u32)?;
                give(&mut c, &value, ret_ptr, ret_len)
            })())
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap() {
        let shared = Shared::default();
        let vm: Arc<str> = "f".into();
        assert_eq!(shared.get(&vm, b"k"), None);
        shared.set(&vm, b"k".to_vec(), b"1".to_vec(), 0).unwrap();
        let (value, cas) = shared.get(&vm, b"k").unwrap();
        assert_eq!(value, b"1");
        shared.set(&vm, b"k".to_vec(), b"2".to_vec(), cas).unwrap();
        assert_eq!(
            shared.set(&vm, b"k".to_vec(), b"3".to_vec(), cas),
            Err(Status::CasMismatch),
            "the token moved on with the last write"
        );
        assert_eq!(shared.get(&vm, b"k").unwrap().0, b"2");
        assert_eq!(shared.get(&"other".into(), b"k"), None, "scoped by VM id");
    }

    #[test]
    fn queues_by_name_and_id() {
        let shared = Arc::new(Shared::default());
        let vm: Arc<str> = "f".into();
        let owner = Owner {
            home: Home {
                slot: std::sync::Weak::new(),
                generation: 1,
            },
            root: 1,
        };
        let id = shared.register(&vm, b"q".to_vec(), owner.clone()).unwrap();
        assert_eq!(
            shared.register(&vm, b"q".to_vec(), owner).unwrap(),
            id,
            "same name, same id"
        );
        // A full queue keeps its newest items.
        for i in 0..MAX_QUEUED + 1 {
            shared.enqueue(id, i.to_string().into_bytes()).unwrap();
        }
        assert_eq!(shared.dequeue(id).unwrap(), b"1", "the oldest was dropped");
        while shared.dequeue(id).is_ok() {}
        assert_eq!(shared.resolve(&vm, b"q".to_vec()), Some(id));
        assert_eq!(shared.resolve(&vm, b"nope".to_vec()), None);
        assert_eq!(shared.dequeue(id), Err(Status::Empty));
        shared.enqueue(id, b"a".to_vec()).unwrap();
        shared.enqueue(id, b"b".to_vec()).unwrap();
        assert_eq!(shared.dequeue(id).unwrap(), b"a");
        assert_eq!(shared.dequeue(id).unwrap(), b"b");
        assert_eq!(shared.enqueue(999, b"x".to_vec()), Err(Status::NotFound));
        assert_eq!(shared.dequeue(0), Err(Status::NotFound));
    }

    /// Shared data and queues hold at most their budget in bytes: a write past it fails, and
    /// what is replaced, removed or dequeued makes room again.
    #[test]
    fn shared_data_and_queues_keep_within_their_bytes() {
        let shared = Shared::new(100);
        let vm: Arc<str> = "f".into();
        shared.set(&vm, b"a".to_vec(), vec![0; 59], 0).unwrap();
        assert_eq!(
            shared.set(&vm, b"b".to_vec(), vec![0; 50], 0),
            Err(Status::InternalFailure),
            "60 + 51 > 100"
        );
        // Replacing a value counts only the difference.
        shared.set(&vm, b"a".to_vec(), vec![0; 9], 0).unwrap();
        shared.set(&vm, b"b".to_vec(), vec![0; 50], 0).unwrap();
        let owner = Owner {
            home: Home {
                slot: std::sync::Weak::new(),
                generation: 1,
            },
            root: 1,
        };
        let shared = Arc::new(shared);
        let id = shared.register(&vm, b"q".to_vec(), owner).unwrap();
        // Keys and values: 10 + 51, the queue's name 1: 62 bytes so far.
        shared.enqueue(id, vec![0; 29]).unwrap();
        shared.enqueue(id, vec![0; 9]).unwrap();
        assert_eq!(shared.enqueue(id, vec![0; 1]), Err(Status::InternalFailure));
        shared.dequeue(id).unwrap();
        shared.enqueue(id, vec![0; 29]).unwrap();
    }
}
