//! The command line, as clap parses it.

use clap::{Parser, Subcommand};

/// hivetrack: who holds this registry hive open, which keys, since when, and from where.
#[derive(Debug, Parser)]
#[command(name = "hivetrack", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the client's version and the driver's version and build.
    Version,
    /// Send one raw control code to the driver and print the answer in hex (diagnostics and
    /// tests of the driver's validation; not part of the stable interface).
    #[command(hide = true)]
    RawIoctl {
        /// The control code, decimal or 0x-prefixed hex.
        #[arg(long, value_parser = parse_u32)]
        code: u32,
        /// Input bytes, as hex digits.
        #[arg(long, default_value = "", value_parser = parse_hex)]
        input: HexBytes,
        /// Size of the output buffer.
        #[arg(long, default_value_t = 4096)]
        output_len: usize,
    },
}

/// Bytes given on the command line as hex digits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

/// Parses a decimal or `0x`-prefixed hexadecimal `u32`.
///
/// # Errors
/// A message clap shows when the text is not such a number.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .map_or_else(|| s.parse(), |hex| u32::from_str_radix(hex, 16));
    parsed.map_err(|e| format!("`{s}` is not a 32-bit number: {e}"))
}

/// Parses hex digits (whitespace allowed between bytes) into bytes.
///
/// # Errors
/// A message clap shows for an odd digit count or a non-hex character.
pub fn parse_hex(s: &str) -> Result<HexBytes, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("hex input needs an even number of digits".to_owned());
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("`{}` is not a hex byte", String::from_utf8_lossy(pair)))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(HexBytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_hex_parse() {
        assert_eq!(parse_u32("0x8A546000"), Ok(0x8A54_6000));
        assert_eq!(parse_u32("17"), Ok(17));
        assert!(parse_u32("0xZZ").is_err());
        assert_eq!(parse_hex("01 ff"), Ok(HexBytes(vec![1, 0xFF])));
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let err = Cli::try_parse_from(["hivetrack", "raw-ioctl", "--code", "nope"]).unwrap_err();
        assert!(err.use_stderr());
        let err = Cli::try_parse_from(["hivetrack", "frobnicate"]).unwrap_err();
        assert!(err.use_stderr());
    }
}
