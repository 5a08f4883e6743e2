//! Declares the `loom` cfg so `RUSTFLAGS="--cfg loom"` model-checking builds are lint-clean.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
