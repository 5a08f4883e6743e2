//! The Event Log message table DLL of `hivetrack service` (issue 17):
//! `usermode-client/messages/hivetrack-events.mc` compiled with mingw's `windmc`, made a
//! resource object with `windres` and linked by `ld` into a resource-only DLL (no code, no
//! entry point: the Event Log loads it as a data file). Then its message table is read back
//! and must hold exactly the message ids the `.mc` declares, and the DLL must carry it
//! (`RT_MESSAGETABLE` 1, language 0x409, as `objdump -p` shows).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{repo_root, run};

/// The DLL's name in the package (next to `hivetrack.exe`, where `service install` looks).
pub const DLL: &str = "hivetrack-events.dll";

fn tool(name: &str) -> Command {
    Command::new(format!("x86_64-w64-mingw32-{name}"))
}

/// The `MessageId=` numbers of a `.mc` file, in order.
fn declared_ids(mc: &str) -> Result<Vec<u32>> {
    mc.lines()
        .filter_map(|l| l.trim().strip_prefix("MessageId="))
        .map(|n| {
            n.trim()
                .parse::<u32>()
                .with_context(|| format!("MessageId={n} is not a number"))
        })
        .collect()
}

/// The message ids a `MESSAGE_RESOURCE_DATA` blob (windmc's `.bin`) holds.
fn table_ids(bin: &[u8]) -> Result<Vec<u32>> {
    let u32_at = |at: usize| -> Result<u32> {
        bin.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .context("the message table is cut short")
    };
    let blocks = u32_at(0)? as usize;
    let mut ids = Vec::new();
    for i in 0..blocks {
        let (low, high) = (u32_at(4 + 12 * i)?, u32_at(8 + 12 * i)?);
        if high < low {
            bail!("message table block {i} has ids {low}..{high}");
        }
        ids.extend(low..=high);
    }
    Ok(ids)
}

/// Builds `hivetrack-events.dll` into `package`, in `work` (scratch).
///
/// # Errors
/// A missing mingw tool (the message names the package), a `.mc` that does not compile, or a
/// table whose ids differ from the `.mc`'s.
pub fn build(package: &Path, work: &Path) -> Result<PathBuf> {
    let mc = repo_root().join("usermode-client/messages/hivetrack-events.mc");
    std::fs::create_dir_all(work)?;
    let text =
        std::fs::read_to_string(&mc).with_context(|| format!("cannot read {}", mc.display()))?;
    let mut declared = declared_ids(&text)?;
    let hint = "install binutils-mingw-w64-x86-64 (`cargo xtask setup` installs gcc-mingw-w64-x86-64, which brings it)";
    run(tool("windmc")
        .arg("-h")
        .arg(work)
        .arg("-r")
        .arg(work)
        .arg(&mc))
    .context(hint)?;
    let rc = work.join("hivetrack-events.rc");
    let obj = work.join("hivetrack-events.res.o");
    run(tool("windres")
        .arg("-I")
        .arg(work)
        .arg("-i")
        .arg(&rc)
        .args(["-O", "coff", "-o"])
        .arg(&obj))
    .context(hint)?;
    let dll = package.join(DLL);
    std::fs::create_dir_all(package)?;
    // A resource-only DLL: no entry point (-e 0), no code, symbols stripped.
    run(tool("ld")
        .args(["--dll", "-e", "0", "-s", "--subsystem", "windows", "-o"])
        .arg(&dll)
        .arg(&obj))
    .context(hint)?;
    let bin = std::fs::read(work.join("MSG00409.bin")).context("windmc wrote no MSG00409.bin")?;
    let mut built = table_ids(&bin)?;
    declared.sort_unstable();
    built.sort_unstable();
    if declared != built {
        bail!(
            "{} declares message ids {declared:?}, the built table holds {built:?}",
            mc.display()
        );
    }
    let image = std::fs::read(&dll)?;
    if !image.windows(bin.len()).any(|w| w == bin.as_slice()) {
        bail!(
            "{} does not carry the message table windmc built",
            dll.display()
        );
    }
    Ok(dll)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_ids_read_every_block() {
        // Two blocks: 1001..1003 and 1010..1013.
        let mut bin = Vec::new();
        for v in [2u32, 1001, 1003, 28, 1010, 1013, 64] {
            bin.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            table_ids(&bin).unwrap(),
            vec![1001, 1002, 1003, 1010, 1011, 1012, 1013]
        );
        assert!(table_ids(&bin[..10]).is_err());
        assert_eq!(
            declared_ids("MessageId=1001\nx\nMessageId=1010\n").unwrap(),
            vec![1001, 1010]
        );
    }

    #[test]
    fn builds_the_dll_from_the_mc_when_mingw_is_there() {
        if tool("windmc").arg("--version").output().is_err() {
            eprintln!("x86_64-w64-mingw32-windmc is not installed: not built here");
            return;
        }
        let dir = std::env::temp_dir().join(format!("hivetrack-messages-{}", std::process::id()));
        let dll = build(&dir.join("package"), &dir.join("work")).unwrap();
        let image = std::fs::read(&dll).unwrap();
        assert_eq!(&image[..2], b"MZ");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
