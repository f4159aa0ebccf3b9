//! The reset hint: a way for pier to find a component's memory before its instance is reset.
//!
//! The pool resets a released memory by scanning it for the pages the request wrote
//! (`PAGEMAP_SCAN`) and copying those back from the image, but it takes at most 32 runs of
//! written pages and hands everything past the 32nd back to the kernel, so the next request
//! faults those pages in again. An interpreter writes a few hundred pages all over its heap per
//! request (componentize-py: ~130 runs), and in a multi-threaded process every one of those
//! faults also interrupts the other cores to flush their TLBs.
//!
//! wasmtime does not say where a component's memory is. This pass adds, at the end of a
//! component whose memory is large enough to be reset that way, a function that hands that
//! memory to the host as a `list<u8>` from offset 0 to its current size:
//!
//! ```wat
//! (import "pier:internal/reset" (instance (export "written-memory" (func (param "memory" (list u8))))))
//! (core module $hint
//!   (import "" "memory" (memory 0))
//!   (import "" "written-memory" (func (param i32 i32)))
//!   (func (export "run") i32.const 0 memory.size i32.const 16 i32.shl call 0))
//! (export "pier-before-reset" (func (canon lift (core func $hint "run"))))
//! ```
//!
//! The host (`crate::dirty`) calls the export when a request is done, and, borrowing the list
//! without a copy, joins the runs of written pages so that the pool's scan sees few enough to
//! keep them all resident. Nothing else in the component changes; its memory is not written.

use std::collections::HashMap;

use wasm_encoder::{
    Alias, CanonicalFunctionSection, CanonicalOption, ComponentAliasSection, ComponentExportKind,
    ComponentExportSection, ComponentImportSection, ComponentTypeRef, ComponentTypeSection,
    ComponentValType, EntityType, ExportKind, Function, ImportSection, InstanceSection,
    InstanceType, MemoryType, ModuleArg, ModuleSection, PrimitiveValType,
};
use wasmparser::{
    CanonicalFunction, ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind,
    ComponentTypeRef as TypeRef, Encoding, Payload,
};

use super::OptimizeError;
use super::component::payloads;
use crate::engine::{SMALL_MEMORY, WASM_PAGE};

/// The interface the hint imports; pier's linker provides it (`crate::dirty::link`).
pub const INTERFACE: &str = "pier:internal/reset";
/// The function of [`INTERFACE`] that receives the memory.
pub const FUNCTION: &str = "written-memory";
/// The export pier calls when a request is done.
pub const EXPORT: &str = "pier-before-reset";

/// The top-level index spaces the appended items extend.
#[derive(Debug, Default)]
struct Counts {
    types: u32,
    funcs: u32,
    instances: u32,
    core_funcs: u32,
    core_modules: u32,
    core_instances: u32,
}

impl Counts {
    fn sort(&mut self, kind: ComponentExternalKind) {
        match kind {
            ComponentExternalKind::Type => self.types += 1,
            ComponentExternalKind::Func => self.funcs += 1,
            ComponentExternalKind::Instance => self.instances += 1,
            ComponentExternalKind::Module => self.core_modules += 1,
            ComponentExternalKind::Component | ComponentExternalKind::Value => {}
        }
    }

    fn type_ref(&mut self, ty: TypeRef) {
        match ty {
            TypeRef::Type(_) => self.types += 1,
            TypeRef::Func(_) => self.funcs += 1,
            TypeRef::Instance(_) => self.instances += 1,
            TypeRef::Module(_) => self.core_modules += 1,
            TypeRef::Component(_) | TypeRef::Value(_) => {}
        }
    }
}

/// `bytes` with the reset hint appended, or `None` when it needs none: no memory starts larger
/// than [`SMALL_MEMORY`], no canonical function names a memory, or it has the hint already.
pub fn add(bytes: &[u8]) -> Result<Option<Vec<u8>>, OptimizeError> {
    let mut counts = Counts::default();
    let mut core_memories = 0u32;
    // How many canonical functions use each core memory: the one most use is the component's.
    let mut uses: HashMap<u32, usize> = HashMap::new();
    let mut large = false;
    for payload in payloads(bytes) {
        let (depth, payload) = payload?;
        let payload = match (depth, payload) {
            // Defined memories of a top-level module.
            (1, Payload::MemorySection(reader)) => {
                for memory in reader {
                    large |= memory?.initial.saturating_mul(WASM_PAGE) > SMALL_MEMORY;
                }
                continue;
            }
            (0, payload) => payload,
            _ => continue,
        };
        match payload {
            Payload::Version { encoding, .. } if encoding != Encoding::Component => {
                return Ok(None);
            }
            Payload::ModuleSection { .. } => counts.core_modules += 1,
            Payload::InstanceSection(reader) => counts.core_instances += reader.count(),
            Payload::ComponentInstanceSection(reader) => counts.instances += reader.count(),
            Payload::ComponentTypeSection(reader) => counts.types += reader.count(),
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import?;
                    if import.name.name == INTERFACE {
                        return Ok(None);
                    }
                    counts.type_ref(import.ty);
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    counts.sort(export?.kind);
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader {
                    match alias? {
                        ComponentAlias::InstanceExport { kind, .. } => counts.sort(kind),
                        ComponentAlias::CoreInstanceExport { kind, .. } => match kind {
                            wasmparser::ExternalKind::Func
                            | wasmparser::ExternalKind::FuncExact => counts.core_funcs += 1,
                            wasmparser::ExternalKind::Memory => core_memories += 1,
                            _ => {}
                        },
                        ComponentAlias::Outer { kind, .. } => match kind {
                            ComponentOuterAliasKind::CoreModule => counts.core_modules += 1,
                            ComponentOuterAliasKind::Type => counts.types += 1,
                            ComponentOuterAliasKind::CoreType
                            | ComponentOuterAliasKind::Component => {}
                        },
                    }
                }
            }
            Payload::ComponentCanonicalSection(reader) => {
                for func in reader {
                    let func = func?;
                    let options = match &func {
                        CanonicalFunction::Lift { options, .. }
                        | CanonicalFunction::Lower { options, .. } => &options[..],
                        _ => &[],
                    };
                    for option in options {
                        if let wasmparser::CanonicalOption::Memory(m) = option {
                            *uses.entry(*m).or_default() += 1;
                        }
                    }
                    if matches!(func, CanonicalFunction::Lift { .. }) {
                        counts.funcs += 1;
                    } else {
                        counts.core_funcs += 1;
                    }
                }
            }
            Payload::End(_) => break,
            _ => {}
        }
    }
    let Some(memory) = uses
        .into_iter()
        .max_by_key(|&(memory, n)| (n, std::cmp::Reverse(memory)))
        .map(|(memory, _)| memory)
    else {
        return Ok(None);
    };
    if !large || memory >= core_memories {
        return Ok(None);
    }
    let mut out = bytes.to_vec();
    out.extend_from_slice(&sections(&counts, memory));
    Ok(Some(out))
}

/// The appended sections, encoded (without a component header).
fn sections(counts: &Counts, memory: u32) -> Vec<u8> {
    let mut component = wasm_encoder::Component::new();

    // Types: the imported instance's, and the lifted function's.
    let mut types = ComponentTypeSection::new();
    let mut instance = InstanceType::new();
    instance.ty().defined_type().list(PrimitiveValType::U8);
    instance
        .ty()
        .function()
        .params([("memory", ComponentValType::Type(0))])
        .result(None);
    instance.export(FUNCTION, ComponentTypeRef::Func(1));
    types.instance(&instance);
    let none: [(&str, ComponentValType); 0] = [];
    types.function().params(none).result(None);
    component.section(&types);
    let instance_type = counts.types;
    let run_type = counts.types + 1;

    let mut imports = ComponentImportSection::new();
    imports.import(INTERFACE, ComponentTypeRef::Instance(instance_type));
    component.section(&imports);
    let imported = counts.instances;

    let mut aliases = ComponentAliasSection::new();
    aliases.alias(Alias::InstanceExport {
        instance: imported,
        kind: ComponentExportKind::Func,
        name: FUNCTION,
    });
    component.section(&aliases);
    let host_func = counts.funcs;

    let mut canon = CanonicalFunctionSection::new();
    canon.lower(host_func, [CanonicalOption::Memory(memory)]);
    component.section(&canon);
    let lowered = counts.core_funcs;

    component.section(&ModuleSection(&hint_module()));
    let module = counts.core_modules;

    let mut instances = InstanceSection::new();
    instances.export_items([
        ("memory", ExportKind::Memory, memory),
        (FUNCTION, ExportKind::Func, lowered),
    ]);
    instances.instantiate(module, [("", ModuleArg::Instance(counts.core_instances))]);
    component.section(&instances);

    let mut aliases = ComponentAliasSection::new();
    aliases.alias(Alias::CoreInstanceExport {
        instance: counts.core_instances + 1,
        kind: ExportKind::Func,
        name: "run",
    });
    component.section(&aliases);
    let run = counts.core_funcs + 1;

    let mut canon = CanonicalFunctionSection::new();
    canon.lift(run, run_type, []);
    component.section(&canon);

    let mut exports = ComponentExportSection::new();
    exports.export(EXPORT, ComponentExportKind::Func, counts.funcs + 1, None);
    component.section(&exports);

    let bytes = component.finish();
    // Skip the header: these sections go on the end of an existing component.
    bytes[8..].to_vec()
}

/// The core module that passes the memory, from 0 to its current size, to the host.
fn hint_module() -> wasm_encoder::Module {
    let mut module = wasm_encoder::Module::new();
    let mut types = wasm_encoder::TypeSection::new();
    types.ty().function([wasm_encoder::ValType::I32; 2], []);
    types.ty().function([], []);
    module.section(&types);
    let mut imports = ImportSection::new();
    imports.import(
        "",
        "memory",
        EntityType::Memory(MemoryType {
            minimum: 0,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        }),
    );
    imports.import("", FUNCTION, EntityType::Function(0));
    module.section(&imports);
    let mut functions = wasm_encoder::FunctionSection::new();
    functions.function(1);
    module.section(&functions);
    let mut exports = wasm_encoder::ExportSection::new();
    exports.export("run", ExportKind::Func, 1);
    module.section(&exports);
    let mut code = wasm_encoder::CodeSection::new();
    let mut run = Function::new([]);
    // A memory of 4 GiB wraps to a length of 0: the host then does nothing.
    run.instructions()
        .i32_const(0)
        .memory_size(0)
        .i32_const(16)
        .i32_shl()
        .call(0)
        .end();
    code.function(&run);
    module.section(&code);
    module
}
