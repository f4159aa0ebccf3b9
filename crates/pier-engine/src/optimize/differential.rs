//! Differential test of [`merge`]: modules that `wasm-smith` generates, each importing earlier
//! ones' exports as a linker's output does, are run once as separate instances linked to each
//! other and once merged into one module; every exported function is called in both with the
//! same arguments and the same fuel, and the results, traps, exported globals, memories and
//! tables must be the same after every call.
//!
//! The same modules are also put in a component the way a linker does (instantiated in order,
//! each given the earlier instances; their functions lifted and exported), which goes through
//! the whole [`super::optimize_component`]; every export is called on the component as it was
//! and as optimised, and the results and traps must be the same.
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

/// Generates `count` (a range) linked modules from `seed`.
fn generate(seed: u64, count: std::ops::RangeInclusive<u32>) -> Vec<Vec<u8>> {
    let data = bytes_of(seed);
    let mut u = Unstructured::new(&data);
    let count = u.int_in_range(count.clone()).unwrap_or(*count.start());
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
    let members = generate(seed, 2..=3);
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

/// The members as a linker's component: instantiated in order (member `j` is the instance
/// argument `m{j}`), and every function whose signature lifts without a memory exported as
/// `m{m}-f{k}`.
fn component_of(members: &[Vec<u8>]) -> Vec<u8> {
    use wasm_encoder::{
        ComponentBuilder, ComponentExportKind, ComponentValType, ExportKind, ModuleArg,
        PrimitiveValType,
    };
    let mut builder = ComponentBuilder::default();
    let modules: Vec<u32> = members
        .iter()
        .map(|bytes| builder.core_module_raw(None, bytes))
        .collect();
    let mut instances: Vec<u32> = Vec::new();
    for (m, module) in modules.iter().enumerate() {
        let names: Vec<String> = (0..m).map(|j| format!("m{j}")).collect();
        let args: Vec<(&str, ModuleArg)> = names
            .iter()
            .zip(&instances)
            .map(|(name, i)| (name.as_str(), ModuleArg::Instance(*i)))
            .collect();
        instances.push(builder.core_instantiate(None, *module, args));
    }
    let lifted = |ty: &wasmparser::ValType| match ty {
        wasmparser::ValType::I32 => Some(PrimitiveValType::S32),
        wasmparser::ValType::I64 => Some(PrimitiveValType::S64),
        wasmparser::ValType::F32 => Some(PrimitiveValType::F32),
        wasmparser::ValType::F64 => Some(PrimitiveValType::F64),
        _ => None,
    };
    for (m, bytes) in members.iter().enumerate() {
        let summary = Summary::read(bytes).unwrap();
        for (k, &(name, kind, index)) in summary.export_list.iter().enumerate() {
            if kind != ExternalKind::Func {
                continue;
            }
            let ty = summary.type_list[summary.func_types[index as usize] as usize]
                .clone()
                .expect("a function type");
            let params: Option<Vec<PrimitiveValType>> = ty.params().iter().map(lifted).collect();
            let results: Option<Vec<PrimitiveValType>> = ty.results().iter().map(lifted).collect();
            let (Some(params), Some(results)) = (params, results) else {
                continue;
            };
            if results.len() > 1 || params.len() > 16 {
                continue;
            }
            let core = builder.core_alias_export(None, instances[m], name, ExportKind::Func);
            let (type_index, encoder) = builder.type_function(None);
            let names: Vec<String> = (0..params.len()).map(|i| format!("p{i}")).collect();
            let mut encoder = encoder;
            encoder.params(
                names
                    .iter()
                    .zip(&params)
                    .map(|(n, t)| (n.as_str(), ComponentValType::Primitive(*t))),
            );
            encoder.result(results.first().map(|t| ComponentValType::Primitive(*t)));
            let func = builder.lift_func(None, core, type_index, []);
            builder.export(format!("m{m}-f{k}"), ComponentExportKind::Func, func, None);
        }
    }
    builder.finish()
}

/// Calls every export of `component` in order with arguments from `seed`: what each returned.
fn run_component(engine: &Engine, component: &[u8], seed: u64) -> Result<Vec<String>, String> {
    use wasmtime::component::{Component, Linker, Type, Val as CVal};
    let component = Component::new(engine, component).map_err(|e| format!("compile: {e}"))?;
    let mut linker = Linker::new(engine);
    linker
        .instance(super::hint::INTERFACE)
        .unwrap()
        .func_wrap(super::hint::FUNCTION, |_, (memory,): (Vec<u8>,)| {
            assert_eq!(memory.len() % 65536, 0, "the hint hands over whole pages");
            Ok(())
        })
        .unwrap();
    let mut store = Store::new(engine, ());
    store.set_fuel(FUEL).unwrap();
    let instance = match linker.instantiate(&mut store, &component) {
        Ok(instance) => instance,
        Err(e) => {
            return Ok(vec![format!(
                "instantiation: {:?}",
                e.downcast_ref::<Trap>()
            )]);
        }
    };
    let data = bytes_of(seed ^ 0xc0);
    let mut u = Unstructured::new(&data);
    let mut seen = Vec::new();
    let names: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    for name in names {
        let func = instance
            .get_func(&mut store, &name)
            .expect("an exported function");
        let ty = func.ty(&store);
        let args: Vec<CVal> = ty
            .params()
            .map(|(_, ty)| match ty {
                Type::S32 => CVal::S32(u.arbitrary().unwrap_or(0)),
                Type::S64 => CVal::S64(u.arbitrary().unwrap_or(0)),
                Type::Float32 => CVal::Float32(f32::from_bits(u.arbitrary().unwrap_or(0))),
                Type::Float64 => CVal::Float64(f64::from_bits(u.arbitrary().unwrap_or(0))),
                other => panic!("not lifted: {other:?}"),
            })
            .collect();
        let mut results = vec![CVal::Bool(false); ty.results().len()];
        store.set_fuel(FUEL).unwrap();
        let outcome = match func.call(&mut store, &args, &mut results) {
            Ok(()) => {
                let shown: Vec<String> = results
                    .iter()
                    .map(|v| match v {
                        CVal::Float32(f) => format!("f32 {:#x}", f.to_bits()),
                        CVal::Float64(f) => format!("f64 {:#x}", f.to_bits()),
                        other => format!("{other:?}"),
                    })
                    .collect();
                format!("{name}: {shown:?}")
            }
            Err(e) => match e.downcast_ref::<Trap>() {
                Some(Trap::StackOverflow) => return Err("stack overflow".into()),
                Some(trap) => format!("{name}: trap {trap:?}"),
                // A trapped instance refuses every later call, on both sides alike.
                None => format!("{name}: error"),
            },
        };
        seen.push(outcome);
    }
    Ok(seen)
}

#[test]
fn optimised_components_behave_as_the_components_they_were() {
    let engine = engine();
    let first = env("PIER_DIFFERENTIAL_FIRST", 0);
    let cases = env("PIER_DIFFERENTIAL_CASES", 150);
    let (mut merged, mut calls) = (0, 0);
    for seed in REGRESSIONS.iter().copied().chain(first..first + cases) {
        // Three modules, so that the table's owner can have the two importers a linker's
        // output has.
        let members = generate(seed, 3..=3);
        let original = component_of(&members);
        if super::validate(&original).is_err() {
            continue;
        }
        let optimized = match super::optimize_component(&original) {
            Ok(Some(optimized)) if optimized.merged_modules > 0 => optimized,
            Ok(_) | Err(super::OptimizeError::Unsupported(_)) => continue,
            Err(e) => fail(seed, &members, None, &format!("the optimiser failed: {e}")),
        };
        let before = run_component(&engine, &original, seed);
        let after = run_component(&engine, &optimized.bytes, seed);
        match (&before, &after) {
            (Err(e), _) if e.starts_with("compile") => continue,
            (Err(e), _) | (_, Err(e)) if e == "stack overflow" => continue,
            _ => {}
        }
        if before != after {
            fail(
                seed,
                &members,
                Some(&optimized.bytes),
                &format!("component: {before:?} as it was, {after:?} optimised"),
            );
        }
        merged += 1;
        calls += before.map_or(0, |b| b.len());
    }
    println!("{merged} components merged and compared ({calls} calls)");
    assert!(
        merged >= 10 && calls >= merged,
        "{merged} merged, {calls} calls"
    );
}
