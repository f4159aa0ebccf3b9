//! Choosing what to merge: the module that owns a function table, the modules that import it,
//! and whatever sits between them and must join them or move after them.

use std::collections::{BTreeMap, BTreeSet};

use wasmparser::{CanonicalFunction, ExternalKind, Instance, TypeRef};

use super::OptimizeError;
use super::component::{Item, Origin, Parsed, Space};

/// What to merge: core instances in order, the table owner first.
pub(super) struct Plan<'a> {
    pub(super) members: Vec<u32>,
    /// Per member: per import, its origin (an `Export` of a member is internal).
    pub(super) sources: Vec<Vec<Origin<'a>>>,
    /// Positions of items between the first and the last member that use a member.
    pub(super) moved: BTreeSet<usize>,
    /// Positions of the first and the last member.
    pub(super) first: usize,
    pub(super) last: usize,
}

impl<'a> Parsed<'a> {
    /// Finds the table owner and the modules that import its table, and the largest set of them
    /// that can be merged.
    pub(super) fn plan(&mut self) -> Result<Option<Plan<'a>>, OptimizeError> {
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
        // One importer is wit-component's own indirection (a fixup module filling the table of
        // its shim with lowered functions), in every component it makes, and nothing to merge: a
        // linker's output has every library and its init module importing the table.
        if candidates.len() < 2 {
            return Ok(None);
        }
        // Fewer and fewer importers, the last one first, until a set can be merged; if none
        // can, the reason the largest set could not.
        let mut first_error = None;
        while !candidates.is_empty() {
            match self.try_plan(owner, &candidates) {
                Ok(plan) => return Ok(Some(plan)),
                Err(e) => {
                    tracing::debug!(
                        "cannot merge up to core instance {:?}: {e}",
                        candidates.last()
                    );
                    first_error.get_or_insert(e);
                    candidates.pop();
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
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
}
