//! Merging core modules that were linked at run time into one module.
//!
//! The members are given in the order they were instantiated. Each import of each member is
//! either resolved to an export of an earlier member (and becomes a direct reference in the
//! merged module) or stays an import of the merged module. Every member's functions, tables,
//! memories, globals, element and data segments keep their order, so the merged module
//! initialises state exactly as the members did one after the other.
//!
//! Offsets of segments computed from immutable globals with constant values (`__table_base`,
//! `__memory_base` of position-independent code) are folded into constants, which is what lets
//! wasmtime initialise the merged module's table lazily and map its memory copy-on-write.

use std::collections::HashMap;

use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{ExternalKind, KnownCustom, Name, Operator, Payload, TypeRef};

use super::OptimizeError;

/// One module to merge and how its imports resolve.
pub(crate) struct Member<'a> {
    /// The module's bytes.
    pub bytes: &'a [u8],
    /// For each import, in order: where it comes from.
    pub imports: Vec<Source>,
}

/// Where an import of a member comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The export `name` of the member at position `member` (an earlier one).
    Member { member: usize, name: String },
    /// An import of the merged module, `module`/`name`.
    Outside { module: String, name: String },
}

/// The index spaces that items of a module live in.
const SPACES: usize = 5;

fn space(kind: ExternalKind) -> Result<usize, OptimizeError> {
    Ok(match kind {
        ExternalKind::Func | ExternalKind::FuncExact => 0,
        ExternalKind::Table => 1,
        ExternalKind::Memory => 2,
        ExternalKind::Global => 3,
        ExternalKind::Tag => return Err(OptimizeError::Unsupported("exception tags")),
    })
}

fn type_ref_space(ty: &TypeRef) -> Result<usize, OptimizeError> {
    Ok(match ty {
        TypeRef::Func(_) | TypeRef::FuncExact(_) => 0,
        TypeRef::Table(_) => 1,
        TypeRef::Memory(_) => 2,
        TypeRef::Global(_) => 3,
        TypeRef::Tag(_) => return Err(OptimizeError::Unsupported("exception tags")),
    })
}

/// What a module holds, read without its code.
pub(crate) struct Summary<'a> {
    pub imports: Vec<(&'a str, &'a str, TypeRef)>,
    pub exports: HashMap<&'a str, (ExternalKind, u32)>,
    /// Exports in their order.
    pub export_list: Vec<(&'a str, ExternalKind, u32)>,
    /// Items defined (not imported), per space.
    pub defined: [u32; SPACES],
    /// Items imported, per space.
    pub imported: [u32; SPACES],
    pub types: u32,
    pub elements: u32,
    pub datas: u32,
    pub has_start: bool,
    /// Type index of every function, imported ones first.
    pub func_types: Vec<u32>,
    /// Global types, imported ones first.
    pub globals: Vec<wasmparser::GlobalType>,
    pub tables: Vec<wasmparser::TableType>,
    pub memories: Vec<wasmparser::MemoryType>,
    /// Function types by type index (`None` for other types).
    pub type_list: Vec<Option<wasmparser::FuncType>>,
}

impl<'a> Summary<'a> {
    pub fn read(bytes: &'a [u8]) -> Result<Summary<'a>, OptimizeError> {
        let mut s = Summary {
            imports: Vec::new(),
            exports: HashMap::new(),
            export_list: Vec::new(),
            defined: [0; SPACES],
            imported: [0; SPACES],
            types: 0,
            elements: 0,
            datas: 0,
            has_start: false,
            func_types: Vec::new(),
            globals: Vec::new(),
            tables: Vec::new(),
            memories: Vec::new(),
            type_list: Vec::new(),
        };
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for sub in group?.into_types() {
                            s.types += 1;
                            s.type_list.push(match sub.composite_type.inner {
                                wasmparser::CompositeInnerType::Func(f) => Some(f),
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import?;
                        let sp = type_ref_space(&import.ty)?;
                        s.imported[sp] += 1;
                        match import.ty {
                            TypeRef::Func(t) | TypeRef::FuncExact(t) => s.func_types.push(t),
                            TypeRef::Global(g) => s.globals.push(g),
                            TypeRef::Table(t) => s.tables.push(t),
                            TypeRef::Memory(m) => s.memories.push(m),
                            TypeRef::Tag(_) => {}
                        }
                        s.imports.push((import.module, import.name, import.ty));
                    }
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        s.func_types.push(ty?);
                        s.defined[0] += 1;
                    }
                }
                Payload::TableSection(reader) => {
                    for table in reader {
                        s.tables.push(table?.ty);
                        s.defined[1] += 1;
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        s.memories.push(memory?);
                        s.defined[2] += 1;
                    }
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        s.globals.push(global?.ty);
                        s.defined[3] += 1;
                    }
                }
                Payload::TagSection(_) => return Err(OptimizeError::Unsupported("exception tags")),
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export?;
                        space(export.kind)?;
                        s.exports.insert(export.name, (export.kind, export.index));
                        s.export_list.push((export.name, export.kind, export.index));
                    }
                }
                Payload::StartSection { .. } => s.has_start = true,
                Payload::ElementSection(reader) => s.elements += reader.count(),
                Payload::DataSection(reader) => s.datas += reader.count(),
                _ => {}
            }
        }
        Ok(s)
    }
}

/// Where an item of a member ends up, before the merged module's imports are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The n-th import of its space in the merged module.
    Import(u32),
    /// The i-th defined item of its space of member m.
    Defined(usize, u32),
}

/// The merged module and what it did. Every export of member `m` named `name` is exported as
/// [`export_name`]`(m, name)`.
pub(crate) struct Merged {
    pub bytes: Vec<u8>,
    /// Entries of the active segments that wasmtime places in the merged module's own table
    /// statically, to initialise on first use.
    pub lazy_elements: u64,
}

/// The name the merged module exports the export `name` of member `member` under.
pub(crate) fn export_name(member: usize, name: &str) -> String {
    format!("{member}/{name}")
}

/// Merges `members` into one module. `summaries[i]` is `Summary::read(members[i].bytes)`.
pub(crate) fn merge(
    members: &[Member<'_>],
    summaries: &[Summary<'_>],
) -> Result<Merged, OptimizeError> {
    // Resolve every member's items to slots.
    let mut slots: Vec<[Vec<Slot>; SPACES]> = Vec::with_capacity(members.len());
    let mut outside: Vec<(String, String, usize, TypeRef)> = Vec::new(); // module, name, member, ty
    let mut import_counts = [0u32; SPACES];
    for (m, (member, summary)) in members.iter().zip(summaries).enumerate() {
        if summary.has_start {
            return Err(OptimizeError::Unsupported(
                "a start function in a linked module",
            ));
        }
        if member.imports.len() != summary.imports.len() {
            return Err(OptimizeError::Malformed("import count"));
        }
        let mut own: [Vec<Slot>; SPACES] = Default::default();
        for ((_, _, ty), source) in summary.imports.iter().zip(&member.imports) {
            let sp = type_ref_space(ty)?;
            let slot = match source {
                Source::Outside { module, name } => {
                    outside.push((module.clone(), name.clone(), m, *ty));
                    import_counts[sp] += 1;
                    Slot::Import(import_counts[sp] - 1)
                }
                Source::Member { member: j, name } => {
                    if *j >= m {
                        return Err(OptimizeError::Malformed("import from a later member"));
                    }
                    let &(kind, index) = summaries[*j]
                        .exports
                        .get(name.as_str())
                        .ok_or(OptimizeError::Malformed("import of a missing export"))?;
                    if space(kind)? != sp {
                        return Err(OptimizeError::Malformed("import of another kind"));
                    }
                    *slots[*j][sp]
                        .get(index as usize)
                        .ok_or(OptimizeError::Malformed("export index"))?
                }
            };
            own[sp].push(slot);
        }
        for (sp, list) in own.iter_mut().enumerate() {
            list.extend((0..summary.defined[sp]).map(|i| Slot::Defined(m, i)));
        }
        slots.push(own);
    }

    // The merged module must fit a slot of the instance pool, as each member did.
    let defined = |sp: usize| summaries.iter().map(|s| s.defined[sp]).sum::<u32>();
    if defined(1) > crate::engine::MAX_TABLES_PER_MODULE
        || defined(2) > crate::engine::MAX_MEMORIES_PER_MODULE
    {
        return Err(OptimizeError::Unsupported(
            "more tables or memories than one module may have in pier's instance pool",
        ));
    }

    // Final indices: the merged module's imports first, then each member's definitions.
    let mut bases = vec![[0u32; SPACES]; members.len()];
    let mut next = import_counts;
    for (m, summary) in summaries.iter().enumerate() {
        bases[m] = next;
        for (sp, n) in next.iter_mut().enumerate() {
            *n += summary.defined[sp];
        }
    }
    let maps: Vec<[Vec<u32>; SPACES]> = slots
        .iter()
        .map(|own| {
            std::array::from_fn(|sp| {
                own[sp]
                    .iter()
                    .map(|slot| match *slot {
                        Slot::Import(n) => n,
                        Slot::Defined(m, i) => bases[m][sp] + i,
                    })
                    .collect()
            })
        })
        .collect();

    let mut type_bases = Vec::with_capacity(members.len());
    let mut types = 0;
    for summary in summaries {
        type_bases.push(types);
        types += summary.types;
    }

    let mut module = wasm_encoder::Module::new();
    let mut mappers: Vec<Mapper> = (0..members.len())
        .map(|m| Mapper {
            types: type_bases[m],
            maps: maps[m].clone(),
            elements: summaries[..m].iter().map(|s| s.elements).sum(),
            datas: summaries[..m].iter().map(|s| s.datas).sum(),
            consts: HashMap::new(),
        })
        .collect();

    // Types.
    let mut type_section = wasm_encoder::TypeSection::new();
    for (m, member) in members.iter().enumerate() {
        for payload in wasmparser::Parser::new(0).parse_all(member.bytes) {
            if let Payload::TypeSection(reader) = payload? {
                mappers[m].parse_type_section(&mut type_section, reader)?;
            }
        }
    }
    module.section(&type_section);

    // Imports of the merged module.
    let mut import_section = wasm_encoder::ImportSection::new();
    for (module_name, name, m, ty) in &outside {
        let ty = mappers[*m].entity_type(*ty)?;
        import_section.import(module_name, name, ty);
    }
    module.section(&import_section);

    // Definitions, member by member, section by section.
    let mut functions = wasm_encoder::FunctionSection::new();
    let mut tables = wasm_encoder::TableSection::new();
    let mut memories = wasm_encoder::MemorySection::new();
    let mut globals = wasm_encoder::GlobalSection::new();
    let mut elements = wasm_encoder::ElementSection::new();
    let mut code = wasm_encoder::CodeSection::new();
    let mut data = wasm_encoder::DataSection::new();
    let mut names = wasm_encoder::NameMap::new();
    let mut any_data_count = false;
    let mut consts: HashMap<u32, i32> = HashMap::new();
    // wasmtime places entries statically segment by segment and stops at the first segment it
    // cannot place (a computed offset, another module's table, expressions, out of bounds).
    let mut lazy_elements = 0u64;
    let mut lazy_open = true;
    let defined_tables: Vec<wasmparser::TableType> = summaries
        .iter()
        .flat_map(|s| s.tables[s.imported[1] as usize..].iter().copied())
        .collect();
    for (m, member) in members.iter().enumerate() {
        let mapper = &mut mappers[m];
        mapper.consts = std::mem::take(&mut consts);
        let mut global_index = bases[m][3];
        for payload in wasmparser::Parser::new(0).parse_all(member.bytes) {
            match payload? {
                Payload::FunctionSection(reader) => {
                    mapper.parse_function_section(&mut functions, reader)?
                }
                Payload::TableSection(reader) => mapper.parse_table_section(&mut tables, reader)?,
                Payload::MemorySection(reader) => {
                    mapper.parse_memory_section(&mut memories, reader)?
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        let global = global?;
                        let init = mapper.const_expr(global.init_expr.clone())?;
                        if !global.ty.mutable
                            && global.ty.content_type == wasmparser::ValType::I32
                            && let Some(value) = mapper.fold(&global.init_expr)
                        {
                            mapper.consts.insert(global_index, value);
                        }
                        globals.global(mapper.global_type(global.ty)?, &init);
                        global_index += 1;
                    }
                }
                Payload::ElementSection(reader) => {
                    for element in reader {
                        let element = element?;
                        if let wasmparser::ElementKind::Active {
                            offset_expr,
                            table_index,
                        } = &element.kind
                        {
                            let table = mapper.maps[1][table_index.unwrap_or(0) as usize];
                            let placed = match (&element.items, mapper.fold(offset_expr)) {
                                (wasmparser::ElementItems::Functions(items), Some(offset))
                                    if table >= import_counts[1] =>
                                {
                                    let min =
                                        defined_tables[(table - import_counts[1]) as usize].initial;
                                    let top = u64::from(offset as u32) + u64::from(items.count());
                                    (top <= min).then_some(items.count())
                                }
                                _ => None,
                            };
                            match placed {
                                Some(n) if lazy_open => lazy_elements += u64::from(n),
                                _ => lazy_open = false,
                            }
                        }
                        mapper.parse_element(&mut elements, element)?;
                    }
                }
                Payload::DataCountSection { .. } => any_data_count = true,
                Payload::CodeSectionEntry(body) => mapper.parse_function_body(&mut code, body)?,
                Payload::DataSection(reader) => {
                    for datum in reader {
                        mapper.parse_data(&mut data, datum?)?;
                    }
                }
                Payload::CustomSection(custom) => {
                    if let KnownCustom::Name(reader) = custom.as_known() {
                        for name in reader {
                            if let Ok(Name::Function(map)) = name {
                                for naming in map.into_iter().flatten() {
                                    let own = summaries[m].imported[0];
                                    if naming.index >= own {
                                        names.append(
                                            mapper.maps[0][naming.index as usize],
                                            naming.name,
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        consts = std::mem::take(&mut mapper.consts);
    }

    // Exports: every export of every member, under a name saying whose it is.
    let mut exports = wasm_encoder::ExportSection::new();
    for (m, summary) in summaries.iter().enumerate() {
        for &(name, kind, index) in &summary.export_list {
            let sp = space(kind)?;
            let kind = mappers[m].export_kind(kind)?;
            exports.export(&export_name(m, name), kind, maps[m][sp][index as usize]);
        }
    }

    module.section(&functions);
    module.section(&tables);
    module.section(&memories);
    module.section(&globals);
    module.section(&exports);
    module.section(&elements);
    if any_data_count {
        module.section(&wasm_encoder::DataCountSection { count: data.len() });
    }
    module.section(&code);
    module.section(&data);
    let mut name_section = wasm_encoder::NameSection::new();
    name_section.functions(&names);
    module.section(&name_section);

    Ok(Merged {
        bytes: module.finish(),
        lazy_elements,
    })
}

/// Re-encodes one member's items into the merged module's index spaces.
struct Mapper {
    types: u32,
    maps: [Vec<u32>; SPACES],
    elements: u32,
    datas: u32,
    /// Merged-module globals known to hold a constant i32.
    consts: HashMap<u32, i32>,
}

impl Mapper {
    /// The value of a constant expression of integers and constant globals, if it has one.
    fn fold(&self, expr: &wasmparser::ConstExpr<'_>) -> Option<i32> {
        let mut stack: Vec<i32> = Vec::new();
        let mut reader = expr.get_operators_reader();
        while !reader.eof() {
            match reader.read().ok()? {
                Operator::I32Const { value } => stack.push(value),
                Operator::GlobalGet { global_index } => {
                    let global = *self.maps[3].get(global_index as usize)?;
                    stack.push(*self.consts.get(&global)?);
                }
                Operator::I32Add => {
                    let (b, a) = (stack.pop()?, stack.pop()?);
                    stack.push(a.wrapping_add(b));
                }
                Operator::I32Sub => {
                    let (b, a) = (stack.pop()?, stack.pop()?);
                    stack.push(a.wrapping_sub(b));
                }
                Operator::I32Mul => {
                    let (b, a) = (stack.pop()?, stack.pop()?);
                    stack.push(a.wrapping_mul(b));
                }
                Operator::End => {}
                _ => return None,
            }
        }
        match stack.as_slice() {
            [value] => Some(*value),
            _ => None,
        }
    }

    fn map(&self, sp: usize, index: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        self.maps[sp]
            .get(index as usize)
            .copied()
            .ok_or(reencode::Error::UserError(OptimizeError::Malformed(
                "index out of range",
            )))
    }
}

impl Reencode for Mapper {
    type Error = OptimizeError;

    fn type_index(&mut self, ty: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Ok(self.types + ty)
    }
    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        self.map(0, func)
    }
    fn table_index(&mut self, table: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        self.map(1, table)
    }
    fn memory_index(&mut self, memory: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        self.map(2, memory)
    }
    fn global_index(&mut self, global: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        self.map(3, global)
    }
    fn tag_index(&mut self, _tag: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Err(reencode::Error::UserError(OptimizeError::Unsupported(
            "exception tags",
        )))
    }
    fn element_index(&mut self, element: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Ok(self.elements + element)
    }
    fn data_index(&mut self, data: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Ok(self.datas + data)
    }
    fn const_expr(
        &mut self,
        expr: wasmparser::ConstExpr<'_>,
    ) -> Result<wasm_encoder::ConstExpr, reencode::Error<OptimizeError>> {
        match self.fold(&expr) {
            Some(value) if !only_constant(&expr) => Ok(wasm_encoder::ConstExpr::i32_const(value)),
            _ => reencode::utils::const_expr(self, expr),
        }
    }
}

/// Whether `expr` is already a lone `i32.const` (nothing to fold).
fn only_constant(expr: &wasmparser::ConstExpr<'_>) -> bool {
    let mut reader = expr.get_operators_reader();
    matches!(reader.read(), Ok(Operator::I32Const { .. }))
        && matches!(reader.read(), Ok(Operator::End))
}
