//! Reading a component's top level: its entries in order, what each core index names, and
//! where an instance's export really comes from.

use std::collections::HashMap;

use wasmparser::{
    CanonicalFunction, CanonicalOption, ComponentAlias, ComponentExternalKind, Encoding,
    ExternalKind, Instance, Payload,
};

use super::OptimizeError;
use super::merge::Summary;

/// The core index spaces of a component that the rewrite renumbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Space {
    Instance,
    Func,
    Table,
    Memory,
    Global,
    Tag,
}

impl Space {
    pub(super) fn of(kind: ExternalKind) -> Space {
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
pub(super) enum Item<'a> {
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

/// A component's top level, read.
pub(super) struct Parsed<'a> {
    pub(super) items: Vec<Item<'a>>,
    /// Item position of each module, by module index.
    pub(super) modules: Vec<usize>,
    /// Item position of each core instance and core item, by index.
    pub(super) defs: HashMap<(Space, u32), usize>,
    /// Modules read so far, by item position.
    pub(super) summaries: HashMap<usize, Summary<'a>>,
}

/// Where an instance's export comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Origin<'a> {
    /// An export of an instantiated module.
    Export(u32, &'a str),
    /// A core item made by `canon` (a lowered function, `resource.drop`, ...).
    Canon(Space, u32),
}

/// Every payload of `bytes` with its depth: 0 for the component's own sections (a nested module
/// or component section included), 1 for the sections inside a module or component it contains,
/// and so on.
pub(super) fn payloads(
    bytes: &[u8],
) -> impl Iterator<Item = Result<(usize, Payload<'_>), wasmparser::BinaryReaderError>> {
    let mut depth = 0usize;
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .map(move |payload| {
            let payload = payload?;
            let at = depth;
            match payload {
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                _ => {}
            }
            Ok((at, payload))
        })
}

impl<'a> Parsed<'a> {
    pub(super) fn read(bytes: &'a [u8]) -> Result<Option<Parsed<'a>>, OptimizeError> {
        let mut items = Vec::new();
        let mut modules = Vec::new();
        let mut defs = HashMap::new();
        let mut counts: HashMap<Space, u32> = HashMap::new();
        let mut define = |defs: &mut HashMap<_, _>, space: Space, at: usize| {
            let n = counts.entry(space).or_insert(0);
            defs.insert((space, *n), at);
            *n += 1;
        };
        for payload in payloads(bytes) {
            let (depth, payload) = payload?;
            if depth > 0 {
                continue;
            }
            match payload {
                Payload::Version { encoding, .. } => {
                    if encoding != Encoding::Component {
                        return Ok(None);
                    }
                }
                // The ranges are the sections' own claims: a truncated file claims more than it
                // has.
                Payload::ModuleSection {
                    unchecked_range, ..
                } => {
                    modules.push(items.len());
                    items.push(Item::Module(within(bytes, unchecked_range)?));
                }
                Payload::ComponentSection {
                    unchecked_range, ..
                } => {
                    items.push(Item::Raw(4, within(bytes, unchecked_range)?));
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

    pub(super) fn instance(&self, index: u32) -> Result<(usize, &Instance<'a>), OptimizeError> {
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
    pub(super) fn module_of(&self, index: u32) -> Result<Option<u32>, OptimizeError> {
        Ok(match self.instance(index)?.1 {
            Instance::Instantiate { module_index, .. } => Some(*module_index),
            Instance::FromExports(_) => None,
        })
    }

    pub(super) fn summary(&mut self, module: u32) -> Result<&Summary<'a>, OptimizeError> {
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
    pub(super) fn origin(&self, index: u32, name: &'a str) -> Result<Origin<'a>, OptimizeError> {
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

    pub(super) fn item_origin(
        &self,
        space: Space,
        index: u32,
    ) -> Result<Origin<'a>, OptimizeError> {
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
    pub(super) fn deps(&self, at: usize) -> Result<Vec<usize>, OptimizeError> {
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
}

/// The bytes of a nested module or component, if the file holds all it claims.
fn within(bytes: &[u8], range: std::ops::Range<usize>) -> Result<&[u8], OptimizeError> {
    bytes.get(range).ok_or(OptimizeError::Malformed(
        "a section runs past the end of the file",
    ))
}
