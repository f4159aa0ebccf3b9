//! The load-time component optimiser: dynamically linked components, statically merged.
//!
//! Toolchains that link shared libraries into a component (componentize-py, `wasm-tools
//! component link`) produce one core module that defines the memory and the function table and
//! a dozen library modules that import both and fill the table with element segments at
//! `global.get $__table_base`. wasmtime can initialise a table lazily only when the module
//! itself defines it and the offsets are constants; otherwise every instantiation writes every
//! entry (componentize-py: ~6,500 function references per instance, most of its instantiation
//! time).
//!
//! This module merges the table's owner and the library modules that import the table into one
//! module ([`merge`]) with constant offsets, and rewires the component around it: the merged
//! module is instantiated where the last library was, everything that used a library's exports
//! uses the merged module's, and the libraries' own modules are left empty. Nothing else in the
//! component changes. The result is validated; anything the optimiser does not recognise leaves
//! the component as it was.

mod merge;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use wasm_encoder::reencode::{self, Reencode, ReencodeComponent};
use wasmparser::{
    CanonicalFunction, CanonicalOption, ComponentAlias, ComponentExternalKind, Encoding,
    ExternalKind, Instance, Payload, TypeRef,
};

use merge::{Member, Source, Summary, export_name};

/// Changes whenever the rewrite changes, so compiled code cached from an older one is not used.
pub const VERSION: u32 = 1;

/// Why a component was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    /// The bytes do not parse.
    #[error("cannot parse: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    /// A construct the optimiser does not rewrite.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// A structure other than the one linkers produce.
    #[error("unexpected structure: {0}")]
    Malformed(&'static str),
    /// Writing the new component failed.
    #[error("cannot re-encode: {0}")]
    Reencode(String),
    /// The rewritten component does not validate (a bug in the optimiser, never used).
    #[error("the rewritten component does not validate: {0}")]
    Invalid(String),
}

impl From<reencode::Error<OptimizeError>> for OptimizeError {
    fn from(e: reencode::Error<OptimizeError>) -> Self {
        match e {
            reencode::Error::UserError(e) => e,
            reencode::Error::ParseError(e) => OptimizeError::Parse(e),
            other => OptimizeError::Reencode(other.to_string()),
        }
    }
}

/// A component the optimiser rewrote.
#[derive(Debug)]
pub struct Optimized {
    /// The new component.
    pub bytes: Vec<u8>,
    /// Core modules merged into one.
    pub merged_modules: usize,
    /// Table entries now initialised lazily instead of at every instantiation.
    pub lazy_elements: u64,
}

/// Rewrites a dynamically linked component so that its function table is initialised lazily.
/// `Ok(None)`: there is nothing to merge (no module imports another's table).
pub fn optimize_component(bytes: &[u8]) -> Result<Option<Optimized>, OptimizeError> {
    let Some(mut parsed) = Parsed::read(bytes)? else {
        return Ok(None);
    };
    let Some(plan) = parsed.plan()? else {
        return Ok(None);
    };
    let optimized = parsed.rewrite(&plan)?;
    let mut validator = wasmparser::Validator::new();
    validator
        .validate_all(&optimized.bytes)
        .map_err(|e| OptimizeError::Invalid(e.to_string()))?;
    Ok(Some(optimized))
}

/// The core index spaces of a component that the rewrite renumbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Space {
    Instance,
    Func,
    Table,
    Memory,
    Global,
    Tag,
}

impl Space {
    fn of(kind: ExternalKind) -> Space {
        match kind {
            ExternalKind::Func | ExternalKind::FuncExact => Space::Func,
            ExternalKind::Table => Space::Table,
            ExternalKind::Memory => Space::Memory,
            ExternalKind::Global => Space::Global,
            ExternalKind::Tag => Space::Tag,
        }
    }
}

/// One top-level entry of the component, in order.
enum Item<'a> {
    /// A section copied as it is (`id`, contents).
    Raw(u8, &'a [u8]),
    /// A core module, by its bytes.
    Module(&'a [u8]),
    /// A core instance.
    Instance(Instance<'a>),
    /// An alias.
    Alias(ComponentAlias<'a>),
    /// A canonical function; all but `lift` define a core function.
    Canon(CanonicalFunction),
}

struct Parsed<'a> {
    items: Vec<Item<'a>>,
    /// Item position of each module / core instance / core item, by index.
    modules: Vec<usize>,
    defs: HashMap<(Space, u32), usize>,
    summaries: HashMap<usize, Summary<'a>>,
}

/// Where an instance's export comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Origin<'a> {
    /// An export of an instantiated module.
    Export(u32, &'a str),
    /// A core item made by `canon` (a lowered function, `resource.drop`, ...).
    Canon(Space, u32),
}

/// What to merge: core instances in order, the table owner first.
struct Plan<'a> {
    members: Vec<u32>,
    /// Per member: per import, its origin (an `Export` of a member is internal).
    sources: Vec<Vec<Origin<'a>>>,
    /// Positions of items between the first and the last member that use a member.
    moved: BTreeSet<usize>,
    first: usize,
    last: usize,
}

impl<'a> Parsed<'a> {
    fn read(bytes: &'a [u8]) -> Result<Option<Parsed<'a>>, OptimizeError> {
        let mut items = Vec::new();
        let mut modules = Vec::new();
        let mut defs = HashMap::new();
        let mut counts: HashMap<Space, u32> = HashMap::new();
        let mut define = |defs: &mut HashMap<_, _>, space: Space, at: usize| {
            let n = counts.entry(space).or_insert(0);
            defs.insert((space, *n), at);
            *n += 1;
        };
        let mut depth = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let payload = payload?;
            if depth > 0 {
                match payload {
                    Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                    Payload::End(_) => depth -= 1,
                    _ => {}
                }
                continue;
            }
            match payload {
                Payload::Version { encoding, .. } => {
                    if encoding != Encoding::Component {
                        return Ok(None);
                    }
                }
                Payload::ModuleSection {
                    unchecked_range, ..
                } => {
                    modules.push(items.len());
                    items.push(Item::Module(&bytes[unchecked_range]));
                    depth = 1;
                }
                Payload::ComponentSection {
                    unchecked_range, ..
                } => {
                    items.push(Item::Raw(4, &bytes[unchecked_range]));
                    depth = 1;
                }
                Payload::InstanceSection(reader) => {
                    for instance in reader {
                        define(&mut defs, Space::Instance, items.len());
                        items.push(Item::Instance(instance?));
                    }
                }
                Payload::ComponentAliasSection(reader) => {
                    for alias in reader {
                        let alias = alias?;
                        let space = match alias {
                            ComponentAlias::CoreInstanceExport { kind, .. } => {
                                Some(Space::of(kind))
                            }
                            ComponentAlias::InstanceExport {
                                kind: ComponentExternalKind::Module,
                                ..
                            }
                            | ComponentAlias::Outer { .. } => {
                                return Err(OptimizeError::Unsupported("aliased core modules"));
                            }
                            ComponentAlias::InstanceExport { .. } => None,
                        };
                        if let Some(space) = space {
                            define(&mut defs, space, items.len());
                        }
                        items.push(Item::Alias(alias));
                    }
                }
                Payload::ComponentCanonicalSection(reader) => {
                    for func in reader {
                        let func = func?;
                        if !matches!(func, CanonicalFunction::Lift { .. }) {
                            define(&mut defs, Space::Func, items.len());
                        }
                        items.push(Item::Canon(func));
                    }
                }
                Payload::ComponentImportSection(reader) => {
                    for import in reader.clone() {
                        if matches!(import?.ty, wasmparser::ComponentTypeRef::Module(_)) {
                            return Err(OptimizeError::Unsupported("imported core modules"));
                        }
                    }
                    items.push(Item::Raw(10, &bytes[reader.range()]));
                }
                Payload::ComponentExportSection(reader) => {
                    for export in reader.clone() {
                        if export?.kind == ComponentExternalKind::Module {
                            return Err(OptimizeError::Unsupported("exported core modules"));
                        }
                    }
                    items.push(Item::Raw(11, &bytes[reader.range()]));
                }
                Payload::CoreTypeSection(reader) => {
                    items.push(Item::Raw(3, &bytes[reader.range()]))
                }
                Payload::ComponentTypeSection(reader) => {
                    items.push(Item::Raw(7, &bytes[reader.range()]))
                }
                Payload::ComponentInstanceSection(reader) => {
                    items.push(Item::Raw(5, &bytes[reader.range()]))
                }
                Payload::ComponentStartSection { range, .. } => {
                    items.push(Item::Raw(9, &bytes[range]))
                }
                Payload::CustomSection(custom) => {
                    // Component names index the spaces the rewrite renumbers: dropped.
                    if custom.name() != "component-name" {
                        items.push(Item::Raw(0, &bytes[custom.range()]));
                    }
                }
                Payload::End(_) => break,
                _ => return Err(OptimizeError::Malformed("a section components do not have")),
            }
        }
        Ok(Some(Parsed {
            items,
            modules,
            defs,
            summaries: HashMap::new(),
        }))
    }

    fn instance(&self, index: u32) -> Result<(usize, &Instance<'a>), OptimizeError> {
        let at = *self
            .defs
            .get(&(Space::Instance, index))
            .ok_or(OptimizeError::Malformed("instance index"))?;
        match &self.items[at] {
            Item::Instance(instance) => Ok((at, instance)),
            _ => Err(OptimizeError::Malformed("instance item")),
        }
    }

    /// The module an instance instantiates, if it instantiates one.
    fn module_of(&self, index: u32) -> Result<Option<u32>, OptimizeError> {
        Ok(match self.instance(index)?.1 {
            Instance::Instantiate { module_index, .. } => Some(*module_index),
            Instance::FromExports(_) => None,
        })
    }

    fn summary(&mut self, module: u32) -> Result<&Summary<'a>, OptimizeError> {
        let at = *self
            .modules
            .get(module as usize)
            .ok_or(OptimizeError::Malformed("module index"))?;
        if !self.summaries.contains_key(&at) {
            let Item::Module(bytes) = self.items[at] else {
                unreachable!("modules holds module positions")
            };
            self.summaries.insert(at, Summary::read(bytes)?);
        }
        Ok(&self.summaries[&at])
    }

    /// Where export `name` of core instance `index` comes from, following export bags and
    /// aliases back to an instantiated module or a `canon` definition.
    fn origin(&self, index: u32, name: &'a str) -> Result<Origin<'a>, OptimizeError> {
        match self.instance(index)?.1 {
            Instance::Instantiate { .. } => Ok(Origin::Export(index, name)),
            Instance::FromExports(exports) => {
                let export = exports
                    .iter()
                    .find(|e| e.name == name)
                    .ok_or(OptimizeError::Malformed("missing export in an export bag"))?;
                self.item_origin(Space::of(export.kind), export.index)
            }
        }
    }

    fn item_origin(&self, space: Space, index: u32) -> Result<Origin<'a>, OptimizeError> {
        let at = *self
            .defs
            .get(&(space, index))
            .ok_or(OptimizeError::Malformed("core item index"))?;
        match &self.items[at] {
            Item::Alias(ComponentAlias::CoreInstanceExport {
                instance_index,
                name,
                ..
            }) => self.origin(*instance_index, name),
            Item::Canon(_) => Ok(Origin::Canon(space, index)),
            _ => Err(OptimizeError::Malformed("core item definition")),
        }
    }

    /// Positions of the items `at` uses directly.
    fn deps(&self, at: usize) -> Result<Vec<usize>, OptimizeError> {
        let def = |space, index| {
            self.defs
                .get(&(space, index))
                .copied()
                .ok_or(OptimizeError::Malformed("core item index"))
        };
        let options = |options: &[CanonicalOption]| -> Result<Vec<usize>, OptimizeError> {
            let mut out = Vec::new();
            for option in options {
                match option {
                    CanonicalOption::Memory(m) => out.push(def(Space::Memory, *m)?),
                    CanonicalOption::Realloc(f)
                    | CanonicalOption::PostReturn(f)
                    | CanonicalOption::Callback(f) => out.push(def(Space::Func, *f)?),
                    _ => {}
                }
            }
            Ok(out)
        };
        Ok(match &self.items[at] {
            Item::Instance(Instance::Instantiate { args, .. }) => args
                .iter()
                .map(|arg| def(Space::Instance, arg.index))
                .collect::<Result<_, _>>()?,
            Item::Instance(Instance::FromExports(exports)) => exports
                .iter()
                .map(|e| def(Space::of(e.kind), e.index))
                .collect::<Result<_, _>>()?,
            Item::Alias(ComponentAlias::CoreInstanceExport { instance_index, .. }) => {
                vec![def(Space::Instance, *instance_index)?]
            }
            Item::Canon(CanonicalFunction::Lift {
                core_func_index,
                options: opts,
                ..
            }) => {
                let mut out = options(opts)?;
                out.push(def(Space::Func, *core_func_index)?);
                out
            }
            Item::Canon(CanonicalFunction::Lower { options: opts, .. }) => options(opts)?,
            Item::Canon(
                CanonicalFunction::ResourceNew { .. }
                | CanonicalFunction::ResourceDrop { .. }
                | CanonicalFunction::ResourceRep { .. },
            ) => Vec::new(),
            Item::Canon(_) => return Err(OptimizeError::Unsupported("async canonical built-ins")),
            _ => Vec::new(),
        })
    }

    /// Finds the table owner and the modules that import its table, and the largest set of them
    /// that can be merged.
    fn plan(&mut self) -> Result<Option<Plan<'a>>, OptimizeError> {
        // Who imports whose table.
        let mut importers: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let instances: Vec<u32> = self
            .defs
            .keys()
            .filter(|(s, _)| *s == Space::Instance)
            .map(|(_, i)| *i)
            .collect();
        for index in instances {
            let Some(module) = self.module_of(index)? else {
                continue;
            };
            let tables: Vec<(&'a str, &'a str)> = self
                .summary(module)?
                .imports
                .iter()
                .filter(|(_, _, ty)| matches!(ty, TypeRef::Table(_)))
                .map(|(m, n, _)| (*m, *n))
                .collect();
            for (module_name, name) in tables {
                let Instance::Instantiate { args, .. } = self.instance(index)?.1 else {
                    unreachable!()
                };
                let Some(arg) = args.iter().find(|a| a.name == module_name) else {
                    continue;
                };
                if let Origin::Export(owner, export) = self.origin(arg.index, name)? {
                    let owner_module = self.module_of(owner)?.expect("an instantiation");
                    let summary = self.summary(owner_module)?;
                    if summary.exports.get(export).is_some_and(|(k, i)| {
                        *k == ExternalKind::Table && *i >= summary.imported[1]
                    }) {
                        importers.entry(owner).or_default().push(index);
                    }
                }
            }
        }
        let Some((&owner, list)) = importers.iter().max_by_key(|(_, v)| v.len()) else {
            return Ok(None);
        };
        let mut candidates: Vec<u32> = list.iter().copied().filter(|i| *i > owner).collect();
        candidates.sort_unstable();
        candidates.dedup();
        while !candidates.is_empty() {
            match self.try_plan(owner, &candidates) {
                Ok(plan) => return Ok(Some(plan)),
                Err(e) => {
                    tracing::debug!(
                        "cannot merge up to core instance {:?}: {e}",
                        candidates.last()
                    );
                    candidates.pop();
                }
            }
        }
        Ok(None)
    }

    fn try_plan(&mut self, owner: u32, importers: &[u32]) -> Result<Plan<'a>, OptimizeError> {
        let mut members: BTreeSet<u32> = importers.iter().copied().collect();
        members.insert(owner);
        let first = self.instance(owner)?.0;
        let last = self.instance(*importers.last().expect("not empty"))?.0;
        loop {
            let member_at: BTreeSet<usize> = members
                .iter()
                .map(|m| self.instance(*m).map(|(at, _)| at))
                .collect::<Result<_, _>>()?;
            // Everything between the first and last member that uses a member must move after
            // the merged module.
            let mut tainted = member_at.clone();
            for at in first + 1..=last {
                if !tainted.contains(&at) && self.deps(at)?.iter().any(|d| tainted.contains(d)) {
                    tainted.insert(at);
                }
            }
            let moved: BTreeSet<usize> = tainted.difference(&member_at).copied().collect();
            for &at in &moved {
                if matches!(self.items[at], Item::Canon(CanonicalFunction::Lift { .. })) {
                    return Err(OptimizeError::Unsupported(
                        "a linked module's function lifted before the last one is instantiated",
                    ));
                }
            }
            // Each member's imports: from another member, or from something that stays before
            // the merged module.
            let mut sources = Vec::new();
            let mut grown = false;
            for member in members.clone() {
                let module = self.module_of(member)?.expect("members are instantiations");
                let imports: Vec<(&'a str, &'a str)> = self
                    .summary(module)?
                    .imports
                    .iter()
                    .map(|(m, n, _)| (*m, *n))
                    .collect();
                let Instance::Instantiate { args, .. } = self.instance(member)?.1 else {
                    unreachable!()
                };
                let args = args.clone();
                let mut own = Vec::new();
                for (module_name, name) in imports {
                    let arg = args
                        .iter()
                        .find(|a| a.name == module_name)
                        .ok_or(OptimizeError::Malformed("missing instantiation argument"))?;
                    let origin = self.origin(arg.index, name)?;
                    match &origin {
                        Origin::Export(from, _) if members.contains(from) => {}
                        Origin::Export(from, _) => {
                            let at = self.instance(*from)?.0;
                            if moved.contains(&at) {
                                // An instantiation between the members that both uses and serves
                                // them (a preview1 adapter): it joins them.
                                members.insert(*from);
                                grown = true;
                            } else if at > last {
                                return Err(OptimizeError::Malformed(
                                    "import from a later instance",
                                ));
                            }
                        }
                        Origin::Canon(space, index) => {
                            if moved.contains(&self.defs[&(*space, *index)]) {
                                return Err(OptimizeError::Unsupported(
                                    "a linked module imports a function lowered with its own memory",
                                ));
                            }
                        }
                    }
                    own.push(origin);
                }
                sources.push(own);
            }
            if grown {
                continue;
            }
            for &at in &moved {
                // An instantiation that now happens after the merged module, not between its
                // members, must not run code or write the members' memory or table when made.
                let Item::Instance(Instance::Instantiate { module_index, args }) = &self.items[at]
                else {
                    continue;
                };
                let (module_index, args) = (*module_index, args.clone());
                let summary = self.summary(module_index)?;
                if summary.has_start {
                    return Err(OptimizeError::Unsupported(
                        "a start function between linked modules",
                    ));
                }
                if summary.elements == 0 && summary.datas == 0 {
                    continue;
                }
                let shared: Vec<(&'a str, &'a str)> = summary
                    .imports
                    .iter()
                    .filter(|(_, _, ty)| matches!(ty, TypeRef::Table(_) | TypeRef::Memory(_)))
                    .map(|(m, n, _)| (*m, *n))
                    .collect();
                for (module_name, name) in shared {
                    let arg = args
                        .iter()
                        .find(|a| a.name == module_name)
                        .ok_or(OptimizeError::Malformed("missing instantiation argument"))?;
                    if matches!(self.origin(arg.index, name)?, Origin::Export(from, _) if members.contains(&from))
                    {
                        return Err(OptimizeError::Unsupported(
                            "an instantiation between linked modules that writes their memory or table",
                        ));
                    }
                }
            }
            for &at in &member_at {
                // Only the first member's own start would run at its old place.
                if let Item::Instance(Instance::Instantiate { module_index, .. }) = self.items[at]
                    && self.summary(module_index)?.has_start
                {
                    return Err(OptimizeError::Unsupported(
                        "a start function in a linked module",
                    ));
                }
            }
            if self.modules.iter().any(|&m| m > first) {
                return Err(OptimizeError::Unsupported(
                    "core modules defined after instances",
                ));
            }
            return Ok(Plan {
                members: members.into_iter().collect(),
                sources,
                moved,
                first,
                last,
            });
        }
    }

    fn rewrite(mut self, plan: &Plan<'a>) -> Result<Optimized, OptimizeError> {
        let position: HashMap<u32, usize> = plan
            .members
            .iter()
            .enumerate()
            .map(|(p, m)| (*m, p))
            .collect();

        // Imports of the merged module from outside: loose core items through one export bag,
        // exports of other instances directly.
        let mut loose: BTreeSet<(Space, u32)> = BTreeSet::new();
        let mut from_instances: BTreeSet<u32> = BTreeSet::new();
        let mut members = Vec::new();
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
                            module: "items".into(),
                            name: format!("{space:?}{index}"),
                        }
                    }
                })
                .collect();
            members.push(Member { bytes, imports });
        }
        let mut summaries = Vec::new();
        for &member in &plan.members {
            let module = self.module_of(member)?.expect("an instantiation");
            let at = self.modules[module as usize];
            let Item::Module(bytes) = self.items[at] else {
                unreachable!()
            };
            summaries.push(Summary::read(bytes)?);
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
            if plan
                .members
                .iter()
                .any(|m| self.defs[&(Space::Instance, *m)] == at)
            {
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
                    if *module_index == module
                        && !plan.members.iter().any(|m| self.defs[&(Space::Instance, *m)] == at))
            });
            if !used_elsewhere {
                emptied.insert(self.modules[module as usize]);
            }
        }

        // The new order, and the new index of everything in it.
        let member_at: BTreeSet<usize> = plan
            .members
            .iter()
            .map(|m| self.defs[&(Space::Instance, *m)])
            .collect();
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
                    out.flush();
                    let mut section = wasm_encoder::InstanceSection::new();
                    if let Some(_bag) = bag_index {
                        let items: Vec<(String, wasm_encoder::ExportKind, u32)> = loose
                            .iter()
                            .map(|&(space, index)| {
                                (
                                    format!("{space:?}{index}"),
                                    export_kind(space),
                                    renumber.map[&(space, index)],
                                )
                            })
                            .collect();
                        section.export_items(items.iter().map(|(n, k, i)| (n.as_str(), *k, *i)));
                    }
                    let mut args: Vec<(String, wasm_encoder::ModuleArg)> = Vec::new();
                    if let Some(bag) = bag_index {
                        args.push(("items".into(), wasm_encoder::ModuleArg::Instance(bag)));
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
                    out.component.section(&section);
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
        })
    }
}

enum Step {
    Old(usize),
    NewModules,
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
        if !matches!(self.open, Some(Open::Instances(_))) {
            self.flush();
            self.open = Some(Open::Instances(Default::default()));
        }
        match &mut self.open {
            Some(Open::Instances(s)) => s,
            _ => unreachable!(),
        }
    }

    fn aliases(&mut self) -> &mut wasm_encoder::ComponentAliasSection {
        if !matches!(self.open, Some(Open::Aliases(_))) {
            self.flush();
            self.open = Some(Open::Aliases(Default::default()));
        }
        match &mut self.open {
            Some(Open::Aliases(s)) => s,
            _ => unreachable!(),
        }
    }

    fn canon(&mut self) -> &mut wasm_encoder::CanonicalFunctionSection {
        if !matches!(self.open, Some(Open::Canon(_))) {
            self.flush();
            self.open = Some(Open::Canon(Default::default()));
        }
        match &mut self.open {
            Some(Open::Canon(s)) => s,
            _ => unreachable!(),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.component.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(guest: &str) -> Vec<u8> {
        std::fs::read(pier_testkit::guest(guest)).unwrap()
    }

    #[test]
    fn a_component_without_linked_modules_is_left_alone() {
        assert!(optimize_component(&read("hello")).unwrap().is_none());
        assert!(optimize_component(&read("counter")).unwrap().is_none());
        // Core modules are not the optimiser's business.
        assert!(optimize_component(b"\0asm\x01\0\0\0").unwrap().is_none());
    }

    #[test]
    fn linked_libraries_become_one_module_that_owns_its_table() {
        let linked = read("linked-counter");
        let done = optimize_component(&linked).unwrap().expect("merged");
        // The linker's module owning memory and table, the two libraries, and its init module.
        assert!(done.merged_modules >= 3, "{done:?}");
        // The state library's two entries at `__table_base` (at least) are now constant-offset
        // segments of the merged module's own table.
        assert!(done.lazy_elements >= 2, "{done:?}");

        // The merged module defines the table and has no element segment with a computed
        // offset; the libraries' modules are left empty.
        let mut modules = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&done.bytes) {
            if let Payload::ModuleSection {
                unchecked_range, ..
            } = payload.unwrap()
            {
                modules.push(&done.bytes[unchecked_range]);
            }
        }
        let empty = wasm_encoder::Module::new().finish();
        assert!(modules.iter().filter(|m| **m == empty.as_slice()).count() >= 2);
        let owner = modules
            .iter()
            .map(|m| merge::Summary::read(m).unwrap())
            .find(|s| s.defined[1] > 0 && s.elements > 0)
            .expect("a module defining a table and filling it");
        assert_eq!(owner.imported[1], 0, "the table is the merged module's own");
        let owner_bytes = modules
            .iter()
            .find(|m| {
                let s = merge::Summary::read(m).unwrap();
                s.defined[1] > 0 && s.elements > 0
            })
            .unwrap();
        for payload in wasmparser::Parser::new(0).parse_all(owner_bytes) {
            if let Payload::ElementSection(reader) = payload.unwrap() {
                for element in reader {
                    if let wasmparser::ElementKind::Active { offset_expr, .. } =
                        element.unwrap().kind
                    {
                        let mut ops = offset_expr.get_operators_reader();
                        assert!(
                            matches!(ops.read().unwrap(), wasmparser::Operator::I32Const { .. }),
                            "a computed offset is left"
                        );
                    }
                }
            }
        }
    }
}
