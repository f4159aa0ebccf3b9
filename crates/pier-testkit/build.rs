//! Builds every WAT guest in `guests/wat/` and `guests/hostile/` (and the README example,
//! `examples/hello/hello.wat`)
//! into a component, once per build, so each test binary finds them ready
//! (`pier_testkit::guest("hello")`).

#[allow(dead_code)] // the build script uses only part of it
#[path = "src/compose.rs"]
mod compose;

use std::path::{Path, PathBuf};

use anyhow::Context;

/// wasmtime-wasi-http release whose WIT the guests are built against (matches the workspace pin).
const WASI_HTTP_CRATE: &str = "48.0.8";

/// Extra builds of a guest with a larger initial memory (16 pages), named `NAME-large-memory`:
/// pier resets small and large memories differently, and the isolation probe must cover both.
/// Also `NAME-paused-large-memory`, which pauses 500 ms (`$pause_ns`) before it answers.
const LARGE_MEMORY: &[&str] = &["counter"];

/// Extra builds of a guest that need more of the pool per request than a typical component:
/// `NAME-many-memories` also instantiates a module defining a memory and a table 30 times, and
/// `NAME-many-instances` an empty module 150 times.
const MANY: &[&str] = &["faults"];

/// Extra builds of a guest against an older WASI 0.2.x, to prove version compatibility.
const RETARGETED: &[(&str, &str)] = &[("hello", "0.2.0"), ("hello", "0.2.3")];

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let wat_dir = root.join("guests/wat");
    let hostile_dir = root.join("guests/hostile");
    let example_dir = root.join("examples/hello");
    let guests_wit = root.join("guests/wit");
    println!("cargo:rerun-if-changed={}", wat_dir.display());
    println!("cargo:rerun-if-changed={}", hostile_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        example_dir.join("hello.wat").display()
    );
    println!("cargo:rerun-if-changed={}", guests_wit.display());
    println!("cargo:rerun-if-changed=src/compose.rs");
    println!("cargo:rerun-if-changed=../pier-engine/wit");

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let wasi_wit = compose::find_wasi_wit(WASI_HTTP_CRATE)?;
    let guests = out.join("guests");
    std::fs::create_dir_all(&guests)?;

    let wit_for = |version: &str| -> anyhow::Result<PathBuf> {
        let dir = out.join(format!("wit-{version}"));
        let _ = std::fs::remove_dir_all(&dir);
        compose::prepare_wit(&wasi_wit, &guests_wit, version, &dir)?;
        Ok(dir)
    };
    let wit = wit_for(compose::WIT_VERSION)?;
    let mut sources = vec![example_dir.join("hello.wat")];
    for entry in std::fs::read_dir(&wat_dir)?.chain(std::fs::read_dir(&hostile_dir)?) {
        sources.push(entry?.path());
    }
    for path in sources {
        if path.extension().is_none_or(|e| e != "wat") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let wat = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let bytes = compose::component_from_wat(&wat, &wit, compose::world_of(&wat))
            .map_err(|e| anyhow::anyhow!("guest {}: {e:?}", path.display()))?;
        std::fs::write(guests.join(format!("{name}.wasm")), bytes)?;
    }
    // A directory of WAT shared libraries is linked into one component named after it.
    for entry in std::fs::read_dir(&wat_dir)? {
        let dir = entry?.path();
        if !dir.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|f| f.extension().is_some_and(|e| e == "wat"));
        files.sort();
        let mut libraries = Vec::new();
        for file in &files {
            let wat = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
            let stem = file.file_stem().unwrap().to_string_lossy();
            let name = stem.split_once('-').map_or(&*stem, |(_, n)| n);
            libraries.push((format!("lib{name}.so"), wat));
        }
        let world = compose::world_of(&libraries[0].1).to_string();
        let bytes = compose::linked_component(&libraries, &wit, &world)
            .map_err(|e| anyhow::anyhow!("guest {}: {e:?}", dir.display()))?;
        let name = dir.file_name().unwrap().to_string_lossy();
        std::fs::write(guests.join(format!("{name}.wasm")), bytes)?;
    }
    for (name, version) in RETARGETED {
        let source = example_dir.join(format!("{name}.wat"));
        let text =
            std::fs::read_to_string(&source).with_context(|| source.display().to_string())?;
        let wat = compose::retarget(&text, version);
        let bytes = compose::component_from_wat(&wat, &wit_for(version)?, compose::world_of(&wat))
            .map_err(|e| anyhow::anyhow!("guest {name} at {version}: {e:?}"))?;
        std::fs::write(guests.join(format!("{name}-{version}.wasm")), bytes)?;
    }
    for name in LARGE_MEMORY {
        let source = wat_dir.join(format!("{name}.wat"));
        let text =
            std::fs::read_to_string(&source).with_context(|| source.display().to_string())?;
        let memory = "(memory (export \"memory\") 1)";
        anyhow::ensure!(text.contains(memory), "{}: no `{memory}`", source.display());
        let large = text.replacen(memory, "(memory (export \"memory\") 16)", 1);
        let pause = "(global $pause_ns i64 (i64.const 0))";
        anyhow::ensure!(text.contains(pause), "{}: no `{pause}`", source.display());
        let paused = large.replacen(pause, "(global $pause_ns i64 (i64.const 500_000_000))", 1);
        for (variant, wat) in [("large-memory", large), ("paused-large-memory", paused)] {
            let bytes = compose::component_from_wat(&wat, &wit, compose::world_of(&wat))
                .map_err(|e| anyhow::anyhow!("guest {name}-{variant}: {e:?}"))?;
            std::fs::write(guests.join(format!("{name}-{variant}.wasm")), bytes)?;
        }
    }
    for name in MANY {
        let component = std::fs::read(guests.join(format!("{name}.wasm")))?;
        for (variant, module, count) in [
            ("many-memories", "(module (memory 1) (table 1 funcref))", 30),
            ("many-instances", "(module)", 150),
        ] {
            let bytes = with_extra_instances(&component, module, count)
                .with_context(|| format!("guest {name}-{variant}"))?;
            std::fs::write(guests.join(format!("{name}-{variant}.wasm")), bytes)?;
        }
    }
    // Proxy-Wasm filters are core modules, not components.
    let filters = root.join("guests/proxywasm");
    println!("cargo:rerun-if-changed={}", filters.display());
    for entry in std::fs::read_dir(&filters)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wat") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let bytes = wat::parse_file(&path)
                .map_err(|e| anyhow::anyhow!("filter {}: {e}", path.display()))?;
            std::fs::write(guests.join(format!("filter-{name}.wasm")), bytes)?;
        }
    }
    // Filters built from C by guests/build.sh are committed prebuilt.
    let prebuilt = root.join("guests/prebuilt");
    println!("cargo:rerun-if-changed={}", prebuilt.display());
    for entry in std::fs::read_dir(&prebuilt)? {
        let path = entry?.path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.starts_with("filter-") && file.ends_with(".wasm") {
            std::fs::copy(&path, guests.join(&file))?;
        }
    }
    println!("cargo:rustc-env=PIER_TEST_GUESTS={}", guests.display());
    println!("cargo:rustc-env=PIER_WASI_WIT={}", wasi_wit.display());
    Ok(())
}

/// `component` with one more core module (`module`, in WAT) instantiated `count` times at its
/// top level, after everything it had: appended sections, so the indices of everything before
/// stay as they were.
fn with_extra_instances(component: &[u8], module: &str, count: u32) -> anyhow::Result<Vec<u8>> {
    use wasm_encoder::{
        ComponentSection, ComponentSectionId, Encode, InstanceSection, ModuleArg, RawSection,
    };
    use wasmparser::{Parser, Payload};
    // The new module's index: the core modules defined at the top level before it.
    let (mut modules, mut depth) = (0u32, 0u32);
    for payload in Parser::new(0).parse_all(component) {
        match payload? {
            Payload::ModuleSection { .. } => {
                if depth == 0 {
                    modules += 1;
                }
                depth += 1;
            }
            Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let module = wat::parse_str(module)?;
    let mut out = component.to_vec();
    let module = RawSection {
        id: ComponentSectionId::CoreModule.into(),
        data: &module,
    };
    out.push(module.id);
    module.encode(&mut out);
    let mut instances = InstanceSection::new();
    for _ in 0..count {
        instances.instantiate(modules, std::iter::empty::<(&str, ModuleArg)>());
    }
    out.push(instances.id());
    instances.encode(&mut out);
    wasmparser::Validator::new()
        .validate_all(&out)
        .context("the extended component does not validate")?;
    Ok(out)
}
