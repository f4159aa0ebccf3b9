//! Writing the component anew around the merged module, every core index renumbered.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use wasm_encoder::reencode::{self, Reencode, ReencodeComponent};
use wasmparser::{ComponentAlias, ExternalKind, Instance};

use super::component::{Item, Origin, Parsed, Space};
use super::merge::{self, Member, Source, Summary, export_name};
use super::plan::Plan;
use super::{OptimizeError, Optimized};

impl<'a> Parsed<'a> {
    /// The component with the plan's members merged.
    pub(super) fn rewrite(mut self, plan: &Plan<'a>) -> Result<Optimized, OptimizeError> {
        let position: HashMap<u32, usize> = plan
            .members
            .iter()
            .enumerate()
            .map(|(p, m)| (*m, p))
            .collect();
        let member_at: BTreeSet<usize> = plan
            .members
            .iter()
            .map(|m| self.defs[&(Space::Instance, *m)])
            .collect();

        // Imports of the merged module from outside: loose core items through one export bag,
        // exports of other instances directly.
        let mut loose: BTreeSet<(Space, u32)> = BTreeSet::new();
        let mut from_instances: BTreeSet<u32> = BTreeSet::new();
        let mut members = Vec::new();
        let mut summaries = Vec::new();
        for (&member, sources) in plan.members.iter().zip(&plan.sources) {
            let module = self.module_of(member)?.expect("an instantiation");
            let at = self.modules[module as usize];
            let Item::Module(bytes) = self.items[at] else {
                unreachable!()
            };
            let imports = sources
                .iter()
                .map(|origin| match origin {
                    Origin::Export(from, name) => match position.get(from) {
                        Some(&p) => Source::Member {
                            member: p,
                            name: name.to_string(),
                        },
                        None => {
                            from_instances.insert(*from);
                            Source::Outside {
                                module: format!("i{from}"),
                                name: name.to_string(),
                            }
                        }
                    },
                    Origin::Canon(space, index) => {
                        loose.insert((*space, *index));
                        Source::Outside {
                            module: LOOSE.into(),
                            name: loose_name(*space, *index),
                        }
                    }
                })
                .collect();
            members.push(Member { bytes, imports });
            // Planning read every member's module already.
            let summary = match self.summaries.remove(&at) {
                Some(summary) => summary,
                None => Summary::read(bytes)?,
            };
            summaries.push(summary);
        }
        let merged = merge::merge(&members, &summaries)?;

        // Members used whole as instantiation arguments later get a module re-exporting what
        // those instantiations import from them.
        let mut reexports: BTreeMap<u32, BTreeSet<&'a str>> = BTreeMap::new();
        for at in plan.first..self.items.len() {
            let Item::Instance(Instance::Instantiate { module_index, args }) = &self.items[at]
            else {
                continue;
            };
            if member_at.contains(&at) {
                continue;
            }
            let (module_index, args) = (*module_index, args.clone());
            for arg in args.iter() {
                if position.contains_key(&arg.index) {
                    let names: Vec<&'a str> = self
                        .summary(module_index)?
                        .imports
                        .iter()
                        .filter(|(m, _, _)| *m == arg.name)
                        .map(|(_, n, _)| *n)
                        .collect();
                    reexports.entry(arg.index).or_default().extend(names);
                }
            }
        }
        let mut reexport_modules = Vec::new();
        for (member, names) in &reexports {
            let p = position[member];
            reexport_modules.push(reexport_module(p, &summaries[p], names)?);
        }

        // A member's module, if nothing else instantiates it, is left empty.
        let mut emptied: BTreeSet<usize> = BTreeSet::new();
        for &member in &plan.members {
            let module = self.module_of(member)?.expect("an instantiation");
            let used_elsewhere = self.items.iter().enumerate().any(|(at, item)| {
                matches!(item, Item::Instance(Instance::Instantiate { module_index, .. })
                    if *module_index == module && !member_at.contains(&at))
            });
            if !used_elsewhere {
                emptied.insert(self.modules[module as usize]);
            }
        }

        // The new order, and the new index of everything in it.
        let last_module = *self.modules.last().expect("members have modules");
        let mut order: Vec<Step> = Vec::new();
        for at in 0..self.items.len() {
            let in_range = at >= plan.first && at <= plan.last;
            if !(in_range && (member_at.contains(&at) || plan.moved.contains(&at))) {
                order.push(Step::Old(at));
            }
            if at == last_module {
                order.push(Step::NewModules);
            }
            if at == plan.last {
                order.push(Step::Merged);
                order.extend(plan.moved.iter().map(|&m| Step::Old(m)));
            }
        }
        let mut renumber = Renumber::default();
        let mut next: HashMap<Space, u32> = HashMap::new();
        let mut bump = |space: Space| {
            let n = next.entry(space).or_insert(0);
            *n += 1;
            *n - 1
        };
        let old_index: HashMap<usize, (Space, u32)> =
            self.defs.iter().map(|(k, &at)| (at, *k)).collect();
        let (mut bag_index, mut merged_index) = (None, 0);
        let mut reexport_index = BTreeMap::new();
        for step in &order {
            match step {
                Step::Old(at) => {
                    if let Some(&(space, old)) = old_index.get(at) {
                        let new = bump(space);
                        renumber.map.insert((space, old), new);
                    }
                }
                Step::NewModules => {}
                Step::Merged => {
                    if !loose.is_empty() {
                        bag_index = Some(bump(Space::Instance));
                    }
                    merged_index = bump(Space::Instance);
                    for member in reexports.keys() {
                        reexport_index.insert(*member, bump(Space::Instance));
                    }
                }
            }
        }
        for &member in &plan.members {
            let new = reexport_index.get(&member).copied().unwrap_or(u32::MAX);
            renumber.map.insert((Space::Instance, member), new);
        }
        let module_count = self.modules.len() as u32;

        // Write it out.
        let mut out = Emitter::default();
        for step in &order {
            match *step {
                Step::NewModules => {
                    out.raw(1, &merged.bytes);
                    for module in &reexport_modules {
                        out.raw(1, module);
                    }
                }
                Step::Merged => {
                    let section = out.instances();
                    if bag_index.is_some() {
                        let items: Vec<(String, wasm_encoder::ExportKind, u32)> = loose
                            .iter()
                            .map(|&(space, index)| {
                                (
                                    loose_name(space, index),
                                    export_kind(space),
                                    renumber.map[&(space, index)],
                                )
                            })
                            .collect();
                        section.export_items(items.iter().map(|(n, k, i)| (n.as_str(), *k, *i)));
                    }
                    let mut args: Vec<(String, wasm_encoder::ModuleArg)> = Vec::new();
                    if let Some(bag) = bag_index {
                        args.push((LOOSE.into(), wasm_encoder::ModuleArg::Instance(bag)));
                    }
                    for from in &from_instances {
                        let new = renumber.map[&(Space::Instance, *from)];
                        args.push((format!("i{from}"), wasm_encoder::ModuleArg::Instance(new)));
                    }
                    section.instantiate(module_count, args.iter().map(|(n, a)| (n.as_str(), *a)));
                    for (i, _) in reexports.keys().enumerate() {
                        section.instantiate(
                            module_count + 1 + i as u32,
                            [("m", wasm_encoder::ModuleArg::Instance(merged_index))],
                        );
                    }
                }
                Step::Old(at) => match &self.items[at] {
                    Item::Raw(id, data) => out.raw(*id, data),
                    Item::Module(bytes) => {
                        if emptied.contains(&at) {
                            out.raw(1, &wasm_encoder::Module::new().finish());
                        } else {
                            out.raw(1, bytes);
                        }
                    }
                    Item::Instance(instance) => {
                        let section = out.instances();
                        renumber.parse_instance(section, instance.clone())?;
                    }
                    Item::Alias(alias) => {
                        let alias = match alias.clone() {
                            ComponentAlias::CoreInstanceExport {
                                kind,
                                instance_index,
                                name,
                            } if position.contains_key(&instance_index) => {
                                let name = export_name(position[&instance_index], name);
                                out.aliases()
                                    .alias(wasm_encoder::Alias::CoreInstanceExport {
                                        instance: merged_index,
                                        kind: renumber.export_kind(kind)?,
                                        name: &name,
                                    });
                                continue;
                            }
                            other => renumber.component_alias(other)?,
                        };
                        out.aliases().alias(alias);
                    }
                    Item::Canon(func) => {
                        let section = out.canon();
                        renumber.parse_component_canonical(section, func.clone())?;
                    }
                },
            }
        }
        Ok(Optimized {
            bytes: out.finish(),
            merged_modules: plan.members.len(),
            lazy_elements: merged.lazy_elements,
            reset_hint: false,
            not_merged: None,
            not_hinted: None,
        })
    }
}

/// The merged module's argument holding the core items it imports that no instance exports
/// (lowered functions, `resource.drop`), each named by [`loose_name`].
const LOOSE: &str = "items";

fn loose_name(space: Space, index: u32) -> String {
    format!("{space:?}{index}")
}

/// One entry of the new component, in order.
enum Step {
    /// An entry of the original component, by position.
    Old(usize),
    /// The merged module and the modules re-exporting members' exports.
    NewModules,
    /// The merged module's instance (with the bag of its loose imports before it) and the
    /// re-exporting instances.
    Merged,
}

fn export_kind(space: Space) -> wasm_encoder::ExportKind {
    match space {
        Space::Func => wasm_encoder::ExportKind::Func,
        Space::Table => wasm_encoder::ExportKind::Table,
        Space::Memory => wasm_encoder::ExportKind::Memory,
        Space::Global => wasm_encoder::ExportKind::Global,
        Space::Tag => wasm_encoder::ExportKind::Tag,
        Space::Instance => unreachable!("instances are not core exports"),
    }
}

/// A module importing `names` of member `member` from the merged module ("m") and exporting
/// them under their own names.
fn reexport_module(
    member: usize,
    summary: &Summary<'_>,
    names: &BTreeSet<&str>,
) -> Result<Vec<u8>, OptimizeError> {
    let mut types = wasm_encoder::TypeSection::new();
    let mut type_of: HashMap<u32, u32> = HashMap::new();
    let mut imports = wasm_encoder::ImportSection::new();
    let mut exports = wasm_encoder::ExportSection::new();
    let mut counts = [0u32; 4];
    let mut roundtrip = reencode::RoundtripReencoder;
    for name in names {
        let &(kind, index) = summary
            .exports
            .get(name)
            .ok_or(OptimizeError::Malformed("re-export of a missing export"))?;
        let index = index as usize;
        let (ty, slot) = match kind {
            ExternalKind::Func | ExternalKind::FuncExact => {
                let t = summary.func_types[index];
                let next = type_of.len() as u32;
                let local = *type_of.entry(t).or_insert_with(|| {
                    let f = summary.type_list[t as usize]
                        .clone()
                        .expect("a function type");
                    let mut vals = |list: &[wasmparser::ValType]| -> Vec<wasm_encoder::ValType> {
                        list.iter()
                            .map(|v| roundtrip.val_type(*v).expect("value types re-encode"))
                            .collect()
                    };
                    let (params, results) = (vals(f.params()), vals(f.results()));
                    types.ty().function(params, results);
                    next
                });
                (wasm_encoder::EntityType::Function(local), 0)
            }
            ExternalKind::Table => (
                wasm_encoder::EntityType::Table(
                    roundtrip.table_type(summary.tables[index]).map_err(plain)?,
                ),
                1,
            ),
            ExternalKind::Memory => (
                wasm_encoder::EntityType::Memory(
                    roundtrip
                        .memory_type(summary.memories[index])
                        .map_err(plain)?,
                ),
                2,
            ),
            ExternalKind::Global => (
                wasm_encoder::EntityType::Global(
                    roundtrip
                        .global_type(summary.globals[index])
                        .map_err(plain)?,
                ),
                3,
            ),
            ExternalKind::Tag => return Err(OptimizeError::Unsupported("exception tags")),
        };
        imports.import("m", &export_name(member, name), ty);
        exports.export(
            name,
            roundtrip.export_kind(kind).map_err(plain)?,
            counts[slot],
        );
        counts[slot] += 1;
    }
    let mut module = wasm_encoder::Module::new();
    module.section(&types).section(&imports).section(&exports);
    Ok(module.finish())
}

fn plain(e: reencode::Error) -> OptimizeError {
    OptimizeError::Reencode(e.to_string())
}

/// Maps the renumbered core index spaces; everything else keeps its index.
#[derive(Default)]
struct Renumber {
    map: HashMap<(Space, u32), u32>,
}

impl Renumber {
    fn get(&self, space: Space, index: u32) -> u32 {
        // An index with no entry is one the rewrite removed; u32::MAX fails validation.
        self.map.get(&(space, index)).copied().unwrap_or(u32::MAX)
    }
}

impl Reencode for Renumber {
    type Error = OptimizeError;
    fn function_index(&mut self, i: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Ok(self.get(Space::Func, i))
    }
    fn table_index(&mut self, i: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Ok(self.get(Space::Table, i))
    }
    fn memory_index(&mut self, i: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Ok(self.get(Space::Memory, i))
    }
    fn global_index(&mut self, i: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Ok(self.get(Space::Global, i))
    }
    fn tag_index(&mut self, i: u32) -> Result<u32, reencode::Error<OptimizeError>> {
        Ok(self.get(Space::Tag, i))
    }
}

impl ReencodeComponent for Renumber {
    fn instance_index(&mut self, i: u32) -> u32 {
        self.get(Space::Instance, i)
    }
}

/// Writes sections, merging consecutive entries of one kind into one section.
#[derive(Default)]
struct Emitter {
    component: wasm_encoder::Component,
    open: Option<Open>,
}

enum Open {
    Instances(wasm_encoder::InstanceSection),
    Aliases(wasm_encoder::ComponentAliasSection),
    Canon(wasm_encoder::CanonicalFunctionSection),
}

/// The open section of kind `$kind`, after writing out one of another kind if one is open.
macro_rules! open_section {
    ($emitter:ident, $kind:ident) => {{
        if !matches!($emitter.open, Some(Open::$kind(_))) {
            $emitter.flush();
            $emitter.open = Some(Open::$kind(Default::default()));
        }
        match &mut $emitter.open {
            Some(Open::$kind(section)) => section,
            _ => unreachable!("just opened"),
        }
    }};
}

impl Emitter {
    fn flush(&mut self) {
        match self.open.take() {
            Some(Open::Instances(s)) => self.component.section(&s),
            Some(Open::Aliases(s)) => self.component.section(&s),
            Some(Open::Canon(s)) => self.component.section(&s),
            None => &mut self.component,
        };
    }

    fn raw(&mut self, id: u8, data: &[u8]) {
        self.flush();
        self.component
            .section(&wasm_encoder::RawSection { id, data });
    }

    fn instances(&mut self) -> &mut wasm_encoder::InstanceSection {
        open_section!(self, Instances)
    }

    fn aliases(&mut self) -> &mut wasm_encoder::ComponentAliasSection {
        open_section!(self, Aliases)
    }

    fn canon(&mut self) -> &mut wasm_encoder::CanonicalFunctionSection {
        open_section!(self, Canon)
    }

    fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.component.finish()
    }
}
