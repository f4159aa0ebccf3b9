//! WAT text + a WIT world -> a component, with the `wat` and `wit-component` crates.
//!
//! Shared by the build script (which builds every guest in `guests/wat/` for the tests) and the
//! `pier-guest` tool (which builds committed artifacts such as the README example).

use std::path::Path;

use anyhow::{Context, Result};
use wit_component::{ComponentEncoder, Linker, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

/// The WASI version of the WIT shipped with wasmtime-wasi-http.
pub const WIT_VERSION: &str = "0.2.12";

/// Prepares a WIT tree at `out`: the WASI packages from `wasi_wit` (rewritten to `version`) and
/// `wasi:config` (from the wasmtime-wasi-config crate of the same release, beside it in the
/// registry) as dependencies, and the `.wit` files of `root` (pier's guest worlds, also
/// rewritten) as the root package.
pub fn prepare_wit(wasi_wit: &Path, root: &Path, version: &str, out: &Path) -> Result<()> {
    let deps = out.join("deps");
    std::fs::create_dir_all(&deps)?;
    for entry in std::fs::read_dir(wasi_wit.join("deps"))? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path())?;
        std::fs::write(deps.join(entry.file_name()), retarget(&text, version))?;
    }
    // WASI 0.3, beside 0.2 (as `p3-NAME.wit`: the packages differ by version only).
    for entry in std::fs::read_dir(wasi_wit.join("../src/p3/wit/deps"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        std::fs::copy(entry.path(), deps.join(format!("p3-{name}")))?;
    }
    let config = config_wit(wasi_wit)?;
    copy_dir(&config, &deps.join("config"))?;
    // The wasi:keyvalue versions pier serves, as pier-engine binds them.
    let engine_wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pier-engine/wit");
    for entry in std::fs::read_dir(&engine_wit)? {
        let entry = entry?;
        copy_dir(&entry.path(), &deps.join(entry.file_name()))?;
    }
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path())?;
        std::fs::write(out.join(entry.file_name()), retarget(&text, version))?;
    }
    Ok(())
}

/// Rewrites WIT or WAT text written against WASI 0.2.12 to another 0.2.x: package versions
/// change and `@since`/`@deprecated` gates (which may name later versions) are dropped.
pub fn retarget(text: &str, version: &str) -> String {
    if version == WIT_VERSION {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(gate) = ["@since(", "@deprecated("]
            .iter()
            .find(|g| tail.starts_with(**g))
        {
            let end = tail[gate.len()..]
                .find(')')
                .map_or(tail.len(), |i| gate.len() + i + 1);
            rest = &tail[end..];
        } else if let Some(after) = tail.strip_prefix(&format!("@{WIT_VERSION}")) {
            out.push('@');
            out.push_str(version);
            rest = after;
        } else {
            out.push('@');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The world named in a WAT guest's first line (`;; world: NAME`), or `http`.
pub fn world_of(wat: &str) -> &str {
    wat.lines()
        .next()
        .and_then(|line| line.trim().strip_prefix(";; world:"))
        .map(str::trim)
        .unwrap_or("http")
}

/// Encodes `wat` (a core module) as a component of `world` from the WIT tree at `wit`.
pub fn component_from_wat(wat: &str, wit: &Path, world: &str) -> Result<Vec<u8>> {
    let mut module = wat::parse_str(wat).context("parsing WAT")?;
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit)
        .with_context(|| format!("reading WIT in {}", wit.display()))?;
    let world = resolve.select_world(&[pkg], Some(world))?;
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()
}

/// Links WAT shared libraries (`@dylink.0` modules, in the order given) into one component of
/// `world` with wit-component's linker, as componentize-py links libpython: the first library
/// carries the world's metadata.
pub fn linked_component(
    libraries: &[(String, String)],
    wit: &Path,
    world: &str,
) -> Result<Vec<u8>> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit)
        .with_context(|| format!("reading WIT in {}", wit.display()))?;
    let world = resolve.select_world(&[pkg], Some(world))?;
    let mut linker = Linker::default().validate(true);
    for (i, (name, wat)) in libraries.iter().enumerate() {
        let mut module = wat::parse_str(wat).with_context(|| format!("parsing {name}"))?;
        if i == 0 {
            embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
        }
        linker = linker.library(name, &module, false)?;
    }
    linker.encode()
}

/// Wraps a preview1 command module into a `wasi:cli/command` component with the adapter.
pub fn component_from_p1(module: &[u8], adapter: &[u8]) -> Result<Vec<u8>> {
    ComponentEncoder::default()
        .module(module)?
        .adapter("wasi_snapshot_preview1", adapter)?
        .validate(true)
        .encode()
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// `wasi:config`'s WIT, in the wasmtime-wasi-config crate of the release whose
/// wasmtime-wasi-http WIT is at `wasi_wit`.
fn config_wit(wasi_wit: &Path) -> Result<std::path::PathBuf> {
    let http_crate = wasi_wit
        .parent()
        .context("the WIT directory has no crate")?;
    let name = http_crate
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("wasmtime-wasi-http-"))
        .context("not a wasmtime-wasi-http crate")?;
    let dir = http_crate
        .with_file_name(format!("wasmtime-wasi-config-{name}"))
        .join("wit/deps/config");
    anyhow::ensure!(dir.is_dir(), "{} not found", dir.display());
    Ok(dir)
}

/// The `wit/` directory of the wasmtime-wasi-http crate pier depends on, found in Cargo's
/// registry (`$CARGO_HOME`, else `~/.cargo`).
pub fn find_wasi_wit(crate_version: &str) -> Result<std::path::PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let src = home.join("registry").join("src");
    let name = format!("wasmtime-wasi-http-{crate_version}");
    for index in std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let wit = index?.path().join(&name).join("wit");
        if wit.join("deps").is_dir() {
            return Ok(wit);
        }
    }
    anyhow::bail!("{name}/wit not found under {}", src.display())
}
