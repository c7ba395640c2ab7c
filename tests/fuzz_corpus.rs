//! The fuzz targets on stable Rust, without libFuzzer: every target's body (`fuzz/bodies/`, whose
//! module doc says how the fuzz crate and this test share them) compiled here and fed every
//! committed input of `fuzz/corpus/<target>/`, so CI notices a target that no longer compiles
//! or an input that breaks an invariant, and a target added without a body or a corpus.

#[path = "../fuzz/bodies/mod.rs"]
mod bodies;

use std::path::{Path, PathBuf};

/// Inputs replayed per target, in name order (the committed corpora hold about 3,000 at most;
/// the cap keeps the replay to seconds if one grows).
const MAX_INPUTS_PER_TARGET: usize = 5_000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn every_fuzz_target_runs_a_shared_body_with_a_corpus() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let names: Vec<&str> = bodies::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(on_disk, names, "fuzz/fuzz_targets/*.rs and fuzz/bodies/mod.rs TARGETS list the same targets");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in names {
        let target =
            std::fs::read_to_string(fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"))).expect("target");
        assert!(
            target.contains(&format!("#[path = \"../bodies/{name}.rs\"]")) && target.contains("body::run(data)"),
            "fuzz_targets/{name}.rs runs fuzz/bodies/{name}.rs, the body this test replays"
        );
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml has a [[bin]] {name}"
        );
    }
}

#[test]
fn the_committed_corpus_replays_through_every_target() {
    for (name, run) in bodies::TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; commit at least one seed input", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        assert!(!inputs.is_empty(), "{} is empty; commit at least one seed input", dir.display());
        inputs.sort();
        inputs.truncate(MAX_INPUTS_PER_TARGET);
        let failed: Vec<&PathBuf> = inputs
            .iter()
            .filter(|path| {
                let data = std::fs::read(path).expect("corpus file");
                std::panic::catch_unwind(|| run(&data)).is_err()
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{name}: {} of {} inputs broke an invariant: {failed:?}",
            failed.len(),
            inputs.len()
        );
    }
}
