//! `cargo xtask soak --ops N` and `cargo xtask fuzz-ioctl --inputs N`: the emulator's `soak`
//! and `ioctl-fuzz` scenarios through the real driver at any size; `cargo xtask test` runs
//! them at the sizes the goals name ([`CI_SOAK_OPS`], [`CI_FUZZ_INPUTS`]). Each prints its
//! figures (operations, failures injected, inputs, time).

use anyhow::Result;

/// Registry operations of the soak in CI.
pub const CI_SOAK_OPS: u64 = 1_000_000;
/// IOCTL inputs of the fuzz in CI.
pub const CI_FUZZ_INPUTS: u64 = 1_000_000;

/// Runs scenario `name` with `var` = `value` in its environment.
fn run_sized(name: &str, var: &str, value: u64) -> Result<()> {
    // SAFETY: xtask is single-threaded here; the variable is read by the emulator child.
    unsafe { std::env::set_var(var, value.to_string()) };
    // Verbose: the suite prints a passing scenario's output, which holds the figures.
    let result = crate::emulate(&["--verbose".to_owned(), name.to_owned()]);
    // SAFETY: as above.
    unsafe { std::env::remove_var(var) };
    result
}

/// The soak with `ops` registry operations.
///
/// # Errors
/// The scenario failed, or the package is missing.
pub fn soak(ops: u64) -> Result<()> {
    run_sized("soak", "HIVETRACK_SOAK_OPS", ops)
}

/// The IOCTL fuzz with `inputs` inputs.
///
/// # Errors
/// The scenario failed, or the package is missing.
pub fn fuzz_ioctl(inputs: u64) -> Result<()> {
    run_sized("ioctl-fuzz", "HIVETRACK_FUZZ_INPUTS", inputs)
}
