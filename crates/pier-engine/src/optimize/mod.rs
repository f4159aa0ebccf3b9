//! The load-time component optimiser: dynamically linked components, statically merged.
//!
//! Toolchains that link shared libraries into a component (componentize-py, `wasm-tools
//! component link`) produce one core module that defines the memory and the function table, and
//! library modules (libc, libpython, ...) that import both and fill the table with element
//! segments at `global.get $__table_base`. wasmtime can initialise a table lazily only when the
//! module itself defines it and the offsets are constants; otherwise every instantiation writes
//! every entry (componentize-py: 5,766 function references per instance, 0.8 of the 1.8 ms a
//! fresh-instance request costs in process).
//!
//! This module merges the table's owner and the library modules that import the table into one
//! module ([`merge`]) with constant offsets, and rewires the component around it: the merged
//! module is instantiated where the last library was, everything that used a library's exports
//! uses the merged module's, and the libraries' own modules are left empty. Nothing else in the
//! component changes. The result is validated; anything the optimiser does not recognise leaves
//! the component as it was.
//!
//! A component (merged or not) whose memory starts larger than 128 KiB also gets the reset hint
//! ([`hint`]): an export through which pier, once a request is done, finds the memory and joins
//! the runs of pages the request wrote, so that the pool's reset keeps them resident
//! ([`crate::dirty`]).

mod component;
#[cfg(test)]
mod differential;
pub mod hint;
mod merge;
mod plan;
mod rewrite;

use wasm_encoder::reencode;

use component::Parsed;

/// Changes whenever the rewrite changes, so compiled code cached from an older one is not used.
pub const VERSION: u32 = 2;

/// Why a component was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    /// The bytes do not parse.
    #[error("cannot parse: {0}")]
    Parse(wasmparser::BinaryReaderError),
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

// By hand rather than `#[from]`, which would also make the parse error the source: the message
// already says it, and a chain printed whole would say it twice.
impl From<wasmparser::BinaryReaderError> for OptimizeError {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        OptimizeError::Parse(e)
    }
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
    /// Core modules merged into one (0: none were).
    pub merged_modules: usize,
    /// Table entries now initialised lazily instead of at every instantiation.
    pub lazy_elements: u64,
    /// Whether the component got the [`hint`] export that shows pier its memory before reset.
    pub reset_hint: bool,
    /// Why the linked modules were not merged, when there were some and they were not.
    pub not_merged: Option<OptimizeError>,
    /// Why the reset hint was not added, when it was due and was not (a bug in the optimiser).
    pub not_hinted: Option<OptimizeError>,
}

/// Rewrites a component for fast fresh instances: a dynamically linked one's modules merged so
/// that its function table is initialised lazily ([`merge`]), and a component with a large
/// memory given the reset hint ([`hint`]). `Ok(None)`: neither applies; an error: the bytes do
/// not parse, or the result does not validate.
pub fn optimize_component(bytes: &[u8]) -> Result<Option<Optimized>, OptimizeError> {
    let (merged, not_merged) = match merged(bytes) {
        Ok(merged) => (merged, None),
        Err(e @ OptimizeError::Invalid(_)) => return Err(e),
        Err(e) => (None, Some(e)),
    };
    let base = merged.as_ref().map_or(bytes, |m| &m.bytes[..]);
    let (hinted, not_hinted) = match hint::add(base) {
        Ok(Some(hinted)) => match validate(&hinted) {
            Ok(()) => (Some(hinted), None),
            Err(e) => (None, Some(e)),
        },
        Ok(None) => (None, None),
        Err(e) => (None, Some(e)),
    };
    if merged.is_none() && hinted.is_none() {
        return not_merged.or(not_hinted).map_or(Ok(None), Err);
    }
    let (merged_modules, lazy_elements) = merged
        .as_ref()
        .map_or((0, 0), |m| (m.merged_modules, m.lazy_elements));
    let reset_hint = hinted.is_some();
    Ok(Some(Optimized {
        bytes: hinted.or(merged.map(|m| m.bytes)).expect("one of them"),
        merged_modules,
        lazy_elements,
        reset_hint,
        not_merged,
        not_hinted,
    }))
}

/// The component with its linked modules merged, validated; `Ok(None)` if it has none.
fn merged(bytes: &[u8]) -> Result<Option<Optimized>, OptimizeError> {
    let Some(mut parsed) = Parsed::read(bytes)? else {
        return Ok(None);
    };
    let Some(plan) = parsed.plan()? else {
        return Ok(None);
    };
    let optimized = parsed.rewrite(&plan)?;
    validate(&optimized.bytes)?;
    Ok(Some(optimized))
}

fn validate(bytes: &[u8]) -> Result<(), OptimizeError> {
    // Every feature: wasmtime checks the ones it enables when it compiles; this is about the
    // rewrite being well formed.
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator
        .validate_all(bytes)
        .map(|_| ())
        .map_err(|e| OptimizeError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmparser::Payload;

    fn read(guest: &str) -> Vec<u8> {
        std::fs::read(pier_testkit::guest(guest)).unwrap()
    }

    /// The names a component imports and exports at its top level.
    fn externs(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
        let (mut imports, mut exports) = (Vec::new(), Vec::new());
        for payload in component::payloads(bytes) {
            match payload.unwrap() {
                (0, Payload::ComponentImportSection(r)) => {
                    imports.extend(r.into_iter().map(|i| i.unwrap().name.name.to_string()))
                }
                (0, Payload::ComponentExportSection(r)) => {
                    exports.extend(r.into_iter().map(|e| e.unwrap().name.name.to_string()))
                }
                _ => {}
            }
        }
        (imports, exports)
    }

    #[test]
    fn a_component_with_a_large_memory_gets_the_reset_hint_and_nothing_else() {
        let original = read("counter-large-memory");
        let done = optimize_component(&original).unwrap().expect("hinted");
        assert!(done.reset_hint);
        assert_eq!((done.merged_modules, done.lazy_elements), (0, 0));
        // The original sections come first, unchanged.
        assert_eq!(&done.bytes[..original.len()], &original[..]);
        let (before_imports, before_exports) = externs(&original);
        let (imports, exports) = externs(&done.bytes);
        assert_eq!(imports[..before_imports.len()], before_imports[..]);
        assert_eq!(
            imports[before_imports.len()..],
            [hint::INTERFACE.to_string()]
        );
        assert_eq!(exports[..before_exports.len()], before_exports[..]);
        assert_eq!(exports[before_exports.len()..], [hint::EXPORT.to_string()]);
        // Once is enough.
        assert!(hint::add(&done.bytes).unwrap().is_none());
        // A small memory (copied back whole) needs none.
        assert!(optimize_component(&read("counter")).unwrap().is_none());
    }

    /// Found by the `optimizer` fuzz target: a file cut short, whose sections claim more bytes
    /// than it holds, made the optimiser index past its end. Every prefix of a real linked
    /// component is now refused or left alone.
    #[test]
    fn a_truncated_component_is_refused_not_a_panic() {
        for guest in ["linked-counter", "counter-large-memory"] {
            let whole = read(guest);
            for len in (0..whole.len()).step_by(7) {
                match optimize_component(&whole[..len]) {
                    Ok(None) | Err(_) => {}
                    Ok(Some(done)) => validate(&done.bytes).unwrap(),
                }
            }
        }
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
        let owner_bytes = modules
            .iter()
            .copied()
            .find(|m| {
                let summary = merge::Summary::read(m).unwrap();
                summary.defined[1] > 0 && summary.elements > 0
            })
            .expect("a module defining a table and filling it");
        let owner = merge::Summary::read(owner_bytes).unwrap();
        assert_eq!(owner.imported[1], 0, "the table is the merged module's own");
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
