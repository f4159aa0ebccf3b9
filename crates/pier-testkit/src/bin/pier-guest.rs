//! Builds guest artifacts from the command line (used by `guests/build.sh`).
//!
//! ```text
//! pier-guest wat2component IN.wat OUT.wasm      WAT core module -> wasi:http component
//! pier-guest adapt IN.wasm OUT.wasm             preview1 command module -> wasi:cli component
//! pier-guest wit-dir OUT VERSION ROOT_DIR        WIT tree: WASI at VERSION + ROOT_DIR's worlds
//! pier-guest dummy WORLD                        print the core imports/exports a world expects
//! ```

use std::path::Path;

use anyhow::{Context, Result, bail};
use pier_testkit::compose;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tmp = tempfile_dir()?;
    match args.as_slice() {
        ["wat2component", input, output] => {
            let wat = std::fs::read_to_string(input).with_context(|| format!("reading {input}"))?;
            let wit = tmp.join("wit");
            compose::prepare_wit(&wasi_wit(), &guests_wit(), compose::WIT_VERSION, &wit)?;
            let bytes = compose::component_from_wat(&wat, &wit, compose::world_of(&wat))?;
            std::fs::write(output, bytes)?;
        }
        ["adapt", input, output] => {
            let module = std::fs::read(input).with_context(|| format!("reading {input}"))?;
            let adapter =
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER;
            std::fs::write(output, compose::component_from_p1(&module, adapter)?)?;
        }
        ["wit-dir", output, version, root] => {
            compose::prepare_wit(&wasi_wit(), Path::new(root), version, Path::new(output))?
        }
        ["dummy", world] => {
            let wit = tmp.join("wit");
            compose::prepare_wit(&wasi_wit(), &guests_wit(), compose::WIT_VERSION, &wit)?;
            let mut resolve = wit_parser::Resolve::default();
            let (pkg, _) = resolve.push_dir(&wit)?;
            let world = resolve.select_world(&[pkg], Some(world))?;
            let module = wit_component::dummy_module(
                &resolve,
                world,
                wit_parser::ManglingAndAbi::Standard32,
            );
            println!("{}", wasmprinter::print_bytes(module)?);
        }
        _ => bail!(
            "usage: pier-guest wat2component IN OUT | adapt IN OUT | wit-dir OUT VERSION ROOT_DIR | dummy WORLD"
        ),
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn wasi_wit() -> std::path::PathBuf {
    env!("PIER_WASI_WIT").into()
}

fn guests_wit() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/wit")
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pier-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
