//! Configures the link of kemu-test-driver.sys as a WDM driver (windows-drivers-rs).
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
