//! Differential test of [`merge`]: modules that `wasm-smith` generates, each importing earlier
//! ones' exports as a linker's output does, are run once as separate instances linked to each
//! other and once merged into one module; every exported function is called in both with the
//! same arguments and the same fuel, and the results, traps, exported globals, memories and
//! tables must be the same after every call.
//!
//! `./test.sh` runs a fixed corpus of seeds (seconds); a longer run:
//! `PIER_DIFFERENTIAL_CASES=20000 PIER_DIFFERENTIAL_FIRST=1000 cargo test -p pier-engine --lib
//! differential -- --nocapture`. A failing seed is written out with its modules and belongs in
//! [`REGRESSIONS`] once fixed.

use arbitrary::Unstructured;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasmparser::ExternalKind;
use wasmtime::{Engine, Extern, Instance, Module, Store, Trap, Val, ValType};

use super::merge::{self, Member, Source, Summary};

/// Seeds that once found a bug: always run.
const REGRESSIONS: &[u64] = &[];

/// Fuel for each call: bounds loops, the same on both sides.
const FUEL: u64 = 20_000;

/// How one seed went.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Merged, run and compared.
    Compared {
        /// Calls compared (0: instantiation trapped on both sides).
        calls: usize,
        /// Whether a later module imported anything of an earlier one.
        linked: bool,
    },
    /// The merger declined (a construct it does not merge, such as two memories).
    Declined,
    /// wasmtime refused a generated module, or a call overflowed the stack (whose depth the
    /// two sides need not share): nothing to compare.
    Inconclusive,
}

fn config(u: &mut Unstructured<'_>, importable: Vec<u8>) -> wasm_smith::Config {
    let mut config = wasm_smith::Config {
        allow_start_export: false,
        export_everything: true,
        available_imports: Some(importable),
        // What pier's engine compiles and linkers emit; no GC, so no externref.
        reference_types_enabled: false,
        gc_enabled: false,
        exceptions_enabled: false,
        threads_enabled: false,
        tail_call_enabled: false,
        relaxed_simd_enabled: false,
        memory64_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        extended_const_enabled: true,
        canonicalize_nans: true,
        max_memories: 1,
        max_tables: 1,
        max_memory32_bytes: 4 << 16,
        max_table_elements: 256,
        max_funcs: 12,
        max_instructions: 120,
        max_globals: 8,
        max_data_segments: 4,
        max_element_segments: 4,
        max_imports: 24,
        ..wasm_smith::Config::default()
    };
    // Some variety in how much each module defines.
    config.min_funcs = u.int_in_range(0..=2).unwrap_or(0);
    config
}

/// A module whose imports are everything `members` export, under module names `m0`, `m1`, ...
fn exports_as_imports(members: &[Vec<u8>]) -> Vec<u8> {
    let mut types = wasm_encoder::TypeSection::new();
    let mut imports = wasm_encoder::ImportSection::new();
    let mut r = RoundtripReencoder;
    for (m, bytes) in members.iter().enumerate() {
        let summary = Summary::read(bytes).expect("generated modules parse");
        for &(name, kind, index) in &summary.export_list {
            let index = index as usize;
            let ty = match kind {
                ExternalKind::Func => {
                    let ty = summary.type_list[summary.func_types[index] as usize]
                        .clone()
                        .expect("a function type");
                    types.ty().func_type(&r.func_type(ty).unwrap());
                    wasm_encoder::EntityType::Function(types.len() - 1)
                }
                ExternalKind::Table => {
                    wasm_encoder::EntityType::Table(r.table_type(summary.tables[index]).unwrap())
                }
                ExternalKind::Memory => wasm_encoder::EntityType::Memory(
                    r.memory_type(summary.memories[index]).unwrap(),
                ),
                ExternalKind::Global => {
                    wasm_encoder::EntityType::Global(r.global_type(summary.globals[index]).unwrap())
                }
                _ => continue,
            };
            imports.import(&format!("m{m}"), name, ty);
        }
    }
    let mut module = wasm_encoder::Module::new();
    module.section(&types).section(&imports);
    module.finish()
}

/// A deterministic stream of bytes for `seed` (xorshift), for wasm-smith to shape.
fn bytes_of(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..16 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// Generates two or three linked modules from `seed`.
fn generate(seed: u64) -> Vec<Vec<u8>> {
    let data = bytes_of(seed);
    let mut u = Unstructured::new(&data);
    let count = u.int_in_range(2..=3).unwrap_or(2);
    let mut members: Vec<Vec<u8>> = Vec::new();
    for _ in 0..count {
        // The first imports nothing: the linker's main module, owning memory and table.
        let config = config(&mut u, exports_as_imports(&members));
        let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
            break;
        };
        members.push(module.to_bytes());
    }
    members
}

/// How each member's imports resolve: `m{j}` is member `j`.
fn sources(members: &[Vec<u8>]) -> Vec<Vec<Source>> {
    members
        .iter()
        .map(|bytes| {
            Summary::read(bytes)
                .unwrap()
                .imports
                .iter()
                .map(|(module, name, _)| Source::Member {
                    member: module[1..].parse().expect("imports name a member"),
                    name: name.to_string(),
                })
                .collect()
        })
        .collect()
}

fn engine() -> Engine {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    Engine::new(&config).unwrap()
}

/// One side of the comparison: the members' instances, or the merged module's one.
struct Side {
    store: Store<()>,
    instances: Vec<Instance>,
    merged: bool,
}

impl Side {
    fn separate(engine: &Engine, members: &[Vec<u8>]) -> Result<Side, Failure> {
        let mut store = Store::new(engine, ());
        let mut instances: Vec<Instance> = Vec::new();
        for bytes in members {
            let module = Module::new(engine, bytes).map_err(|_| Failure::Refused)?;
            let mut imports = Vec::new();
            for import in module.imports() {
                let m: usize = import.module()[1..].parse().unwrap();
                imports.push(
                    instances[m]
                        .get_export(&mut store, import.name())
                        .expect("imported export"),
                );
            }
            store.set_fuel(FUEL).unwrap();
            let instance =
                Instance::new(&mut store, &module, &imports).map_err(|_| Failure::Instantiate)?;
            instances.push(instance);
        }
        Ok(Side {
            store,
            instances,
            merged: false,
        })
    }

    fn merged(engine: &Engine, bytes: &[u8]) -> Result<Side, Failure> {
        let mut store = Store::new(engine, ());
        let module = Module::new(engine, bytes)
            .map_err(|e| Failure::Compile(format!("the merged module does not compile: {e}")))?;
        store.set_fuel(FUEL).unwrap();
        let instance = Instance::new(&mut store, &module, &[]).map_err(|_| Failure::Instantiate)?;
        Ok(Side {
            store,
            instances: vec![instance],
            merged: true,
        })
    }

    /// Member `m`'s export `name`.
    fn find(&mut self, m: usize, name: &str) -> Option<Extern> {
        if self.merged {
            self.instances[0].get_export(&mut self.store, &merge::export_name(m, name))
        } else {
            self.instances[m].get_export(&mut self.store, name)
        }
    }

    /// Calls member `m`'s function `name`: its results, or the trap.
    fn call(&mut self, m: usize, name: &str, args: &[Val]) -> Result<Vec<String>, String> {
        let Some(Extern::Func(func)) = self.find(m, name) else {
            panic!("{m}/{name} is not a function");
        };
        let ty = func.ty(&self.store);
        let mut results: Vec<Val> = ty.results().map(|t| zero(&t)).collect();
        self.store.set_fuel(FUEL).unwrap();
        match func.call(&mut self.store, args, &mut results) {
            Ok(()) => Ok(results.iter().map(show).collect()),
            Err(e) => Err(match e.downcast_ref::<Trap>() {
                Some(trap) => format!("trap: {trap:?}"),
                None => format!("error: {e}"),
            }),
        }
    }

    /// Everything member `m` exports that is not a function, as text to compare.
    fn state(&mut self, m: usize, exports: &[(String, ExternalKind)]) -> Vec<String> {
        let mut state = Vec::new();
        for (name, kind) in exports {
            let item = self.find(m, name);
            state.push(match (kind, item) {
                (ExternalKind::Global, Some(Extern::Global(g))) => {
                    format!("global {name} = {}", show(&g.get(&mut self.store)))
                }
                (ExternalKind::Memory, Some(Extern::Memory(mem))) => {
                    let data = mem.data(&self.store);
                    let sum = data.iter().enumerate().fold(0u64, |h, (i, b)| {
                        h.wrapping_mul(31).wrapping_add(u64::from(*b) ^ i as u64)
                    });
                    format!("memory {name}: {} bytes, sum {sum:x}", data.len())
                }
                (ExternalKind::Table, Some(Extern::Table(t))) => {
                    let size = t.size(&self.store);
                    let set: Vec<bool> = (0..size)
                        .map(|i| {
                            t.get(&mut self.store, i)
                                .is_some_and(|r| r.as_func().is_some_and(|f| f.is_some()))
                        })
                        .collect();
                    format!("table {name}: {size} entries, set {set:?}")
                }
                (_, item) => format!("{name}: {:?}", item.is_some()),
            });
        }
        state
    }
}

/// Why a seed could not be run or compared.
#[derive(Debug)]
enum Failure {
    Refused,
    Compile(String),
    Instantiate,
}

fn zero(ty: &ValType) -> Val {
    Val::default_for_ty(ty).unwrap_or(Val::I32(0))
}

fn show(v: &Val) -> String {
    match v {
        Val::I32(x) => format!("i32 {x}"),
        Val::I64(x) => format!("i64 {x}"),
        Val::F32(x) => format!("f32 {x:#x}"),
        Val::F64(x) => format!("f64 {x:#x}"),
        Val::V128(x) => format!("v128 {:#x}", x.as_u128()),
        Val::FuncRef(f) => format!("funcref {}", f.is_some()),
        other => format!("{other:?}"),
    }
}

fn argument(u: &mut Unstructured<'_>, ty: &ValType) -> Val {
    match ty {
        ValType::I32 => Val::I32(u.arbitrary().unwrap_or(0)),
        ValType::I64 => Val::I64(u.arbitrary().unwrap_or(0)),
        ValType::F32 => Val::F32(u.arbitrary().unwrap_or(0)),
        ValType::F64 => Val::F64(u.arbitrary().unwrap_or(0)),
        ValType::V128 => Val::V128(u.arbitrary::<u128>().unwrap_or(0).into()),
        other => zero(other),
    }
}

/// Runs one seed; panics with what differed.
fn check(engine: &Engine, seed: u64) -> Outcome {
    let members = generate(seed);
    if members.len() < 2 {
        return Outcome::Inconclusive;
    }
    let summaries: Vec<Summary<'_>> = members.iter().map(|b| Summary::read(b).unwrap()).collect();
    let sources = sources(&members);
    let linked = sources.iter().any(|imports| !imports.is_empty());
    let list: Vec<Member<'_>> = members
        .iter()
        .zip(sources)
        .map(|(bytes, imports)| Member { bytes, imports })
        .collect();
    let merged = match merge::merge(&list, &summaries) {
        Ok(merged) => merged,
        Err(super::OptimizeError::Unsupported(_)) => return Outcome::Declined,
        Err(e) => fail(seed, &members, None, &format!("the merger failed: {e}")),
    };
    if let Err(e) = super::validate(&merged.bytes) {
        fail(seed, &members, Some(&merged.bytes), &e.to_string());
    }
    let separate = match Side::separate(engine, &members) {
        Ok(side) => Some(side),
        Err(Failure::Refused) => return Outcome::Inconclusive,
        Err(_) => None,
    };
    let merged_side = match Side::merged(engine, &merged.bytes) {
        Ok(side) => Some(side),
        Err(Failure::Compile(e)) => fail(seed, &members, Some(&merged.bytes), &e),
        Err(_) => None,
    };
    // Instantiation traps (a segment out of bounds) on both sides or on neither.
    let (mut separate, mut merged_side) = match (separate, merged_side) {
        (Some(a), Some(b)) => (a, b),
        (None, None) => return Outcome::Compared { calls: 0, linked },
        (a, _) => {
            let which = if a.is_some() { "merged" } else { "separate" };
            fail(
                seed,
                &members,
                Some(&merged.bytes),
                &format!("instantiation traps only when {which}"),
            )
        }
    };
    // What each member exports besides functions: compared after every call.
    let states: Vec<Vec<(String, ExternalKind)>> = summaries
        .iter()
        .map(|summary| {
            summary
                .export_list
                .iter()
                .filter(|(_, kind, _)| *kind != ExternalKind::Func)
                .map(|(name, kind, _)| (name.to_string(), *kind))
                .collect()
        })
        .collect();
    let data = bytes_of(seed ^ 0x5eed);
    let mut u = Unstructured::new(&data);
    let mut calls = 0;
    for (m, summary) in summaries.iter().enumerate() {
        for &(name, kind, index) in &summary.export_list {
            if kind != ExternalKind::Func {
                continue;
            }
            let Some(Extern::Func(func)) = separate.find(m, name) else {
                unreachable!("exported as a function")
            };
            let params: Vec<ValType> = func.ty(&separate.store).params().collect();
            let args: Vec<Val> = params.iter().map(|t| argument(&mut u, t)).collect();
            let left = separate.call(m, name, &args);
            let right = merged_side.call(m, name, &args);
            let overflowed = |r: &Result<Vec<String>, String>| {
                r.as_ref().is_err_and(|e| e.contains("StackOverflow"))
            };
            if overflowed(&left) || overflowed(&right) {
                return Outcome::Inconclusive;
            }
            if left != right {
                fail(
                    seed,
                    &members,
                    Some(&merged.bytes),
                    &format!("{m}/{name} (function {index}): {left:?} separate, {right:?} merged"),
                );
            }
            calls += 1;
            for (j, exports) in states.iter().enumerate() {
                let (a, b) = (separate.state(j, exports), merged_side.state(j, exports));
                if a != b {
                    fail(
                        seed,
                        &members,
                        Some(&merged.bytes),
                        &format!("after {m}/{name}: member {j}: {a:?} separate, {b:?} merged"),
                    );
                }
            }
        }
    }
    Outcome::Compared { calls, linked }
}

/// Writes the seed's modules where they can be looked at and fails.
fn fail(seed: u64, members: &[Vec<u8>], merged: Option<&[u8]>, what: &str) -> ! {
    let dir = std::env::temp_dir().join(format!("pier-differential-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (m, bytes) in members.iter().enumerate() {
        std::fs::write(dir.join(format!("m{m}.wasm")), bytes).unwrap();
    }
    if let Some(bytes) = merged {
        std::fs::write(dir.join("merged.wasm"), bytes).unwrap();
    }
    panic!("seed {seed}: {what} (modules in {})", dir.display());
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn merged_modules_behave_as_the_linked_modules_they_were() {
    let engine = engine();
    let first = env("PIER_DIFFERENTIAL_FIRST", 0);
    let cases = env("PIER_DIFFERENTIAL_CASES", 150);
    let (mut compared, mut linked, mut calls, mut declined, mut inconclusive) = (0, 0, 0, 0, 0);
    for seed in REGRESSIONS.iter().copied().chain(first..first + cases) {
        match check(&engine, seed) {
            Outcome::Compared {
                calls: n,
                linked: l,
            } => {
                compared += 1;
                calls += n;
                linked += usize::from(l);
            }
            Outcome::Declined => declined += 1,
            Outcome::Inconclusive => inconclusive += 1,
        }
    }
    println!(
        "{compared} seeds compared ({linked} linked, {calls} calls), {declined} declined by \
         the merger, {inconclusive} inconclusive"
    );
    // The corpus must exercise the merger on linked modules, not only its refusals.
    assert!(
        compared * 2 >= cases as usize && linked * 2 >= compared && calls >= compared,
        "{compared} compared, {linked} linked, {calls} calls, {declined} declined, \
         {inconclusive} inconclusive"
    );
}
