//! Open-time stacks (issue 16): the driver's stacks and modules pages, read once per run,
//! and each frame resolved to `module+0xOFFSET` by the load-time rule.
//!
//! Windows sends no notification when an image is unmapped, so a process's module list may
//! hold two images over the same addresses. A frame of a key's stack resolves against the
//! module that contains it and was **loaded last at or before the key's open time**: one
//! mapped later was not there when the key was opened.

use std::collections::HashMap;

use protocol::holders::HolderKey;

use crate::model::{Frame, HeldKey, HoldersReport, KeyStack, StackCoverage};
use crate::symbols::{Symbol, Symbolizer};

/// One stored stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Outer frames were not kept (deeper than the driver keeps).
    pub truncated: bool,
    /// Return addresses, innermost first.
    pub frames: Vec<u64>,
}

/// An image mapped into a process, as the driver recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedModule {
    /// The image path as the kernel named it; `None` when it was not recorded.
    pub path: Option<String>,
    /// Base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// When it was mapped (FILETIME).
    pub load_time: u64,
}

impl LoadedModule {
    /// True when `address` is inside the image.
    #[must_use]
    pub const fn contains(&self, address: u64) -> bool {
        address >= self.base && address - self.base < self.size
    }

    /// Its file name (`shellext.dll`), or `<image at 0x…>` when the path is unknown.
    #[must_use]
    pub fn name(&self) -> String {
        self.path.as_deref().map_or_else(
            || format!("<image at {:#x}>", self.base),
            |p| file_name(p).to_owned(),
        )
    }
}

/// The last component of a path (after its last backslash).
#[must_use]
pub fn file_name(path: &str) -> &str {
    path.rsplit('\\').next().unwrap_or(path)
}

/// What the stacks and modules pages said, for resolving frames.
#[derive(Clone, Debug, Default)]
pub struct StackTable {
    /// Stacks by id.
    pub stacks: HashMap<u32, Stack>,
    /// Modules per process `(pid, start key)`, in load order.
    pub modules: HashMap<(u64, u64), Vec<LoadedModule>>,
    /// Per process, when its first image load not recorded happened (its list is full):
    /// frames of keys opened since are not attributed (an unlisted image may lie over an
    /// older one's range).
    pub modules_lost_since: HashMap<(u64, u64), u64>,
    /// How complete all this is.
    pub coverage: StackCoverage,
}

impl StackTable {
    /// The module of process `(pid, start_key)` holding `address` for a key opened at
    /// `open_time` (FILETIME; 0 when unknown, then any module): among those containing it
    /// and loaded at or before the open, the one loaded last (the later in load order on a
    /// tie).
    #[must_use]
    pub fn module_at(
        &self,
        pid: u64,
        start_key: u64,
        address: u64,
        open_time: u64,
    ) -> Option<&LoadedModule> {
        self.modules
            .get(&(pid, start_key))?
            .iter()
            .enumerate()
            .filter(|(_, m)| m.contains(address) && (open_time == 0 || m.load_time <= open_time))
            .max_by_key(|(i, m)| (m.load_time, *i))
            .map(|(_, m)| m)
    }

    /// The stack of `key`, held by process `(pid, start_key)`, with its frames resolved.
    pub fn resolve(
        &self,
        pid: u64,
        start_key: u64,
        key: &HeldKey,
        symbols: &mut dyn Symbolizer,
    ) -> KeyStack {
        let mut flags = Vec::new();
        if key.stack_ref.flags & HolderKey::STACK_EMPTY != 0 {
            flags.push("empty".to_owned());
        }
        if key.stack_ref.flags & HolderKey::STACK_DROPPED != 0 {
            flags.push("dropped".to_owned());
        }
        if key.stack_ref.flags & HolderKey::STACK_OUT_OF_SCOPE != 0 {
            flags.push("out_of_scope".to_owned());
        }
        let id = key.stack_ref.id;
        if id == 0 {
            if flags.is_empty() {
                flags.push("not_captured".to_owned());
            }
            return KeyStack {
                id,
                flags,
                frames: Vec::new(),
            };
        }
        let Some(stack) = self.stacks.get(&id) else {
            flags.push("unknown_stack".to_owned());
            return KeyStack {
                id,
                flags,
                frames: Vec::new(),
            };
        };
        if stack.truncated {
            flags.push("truncated".to_owned());
        }
        let open_time = key.opened_at.as_ref().map_or(0, |t| t.filetime);
        let frames: Vec<Frame> = stack
            .frames
            .iter()
            .map(|&address| self.frame(pid, start_key, address, open_time, symbols))
            .collect();
        if !stack.truncated && Self::may_be_partial(&frames) {
            flags.push("may_be_partial".to_owned());
        }
        KeyStack { id, flags, frames }
    }

    /// True when a whole stack (not cut at the driver's limit) does not end where a thread's
    /// stack ends, in ntdll.dll (`RtlUserThreadStart`).
    ///
    /// The kernel's user-mode walk stops, keeping the frames so far, at code it cannot
    /// unwind — code with no function-table entry, as JIT-compiled code (WRK `stkwalk.c`
    /// `RtlpWalkFrameChain`; audit 20a, M3) — so the outer callers may be missing. Only "may":
    /// a fiber's stack, say, ends elsewhere. When the process's ntdll.dll is not known by
    /// name (its image load was not recorded, or only without its path) the outermost frame
    /// cannot be shown to be in it either, so the stack cannot be shown whole: "may" too.
    /// Until review 20b (R9) such a stack had no flag, which reads "whole".
    fn may_be_partial(frames: &[Frame]) -> bool {
        let is_ntdll = |path: &str| file_name(path).eq_ignore_ascii_case("ntdll.dll");
        frames
            .last()
            .is_some_and(|outermost| !outermost.module.as_deref().is_some_and(is_ntdll))
    }

    /// One frame of process `(pid, start_key)`'s key opened at `open_time`, resolved.
    fn frame(
        &self,
        pid: u64,
        start_key: u64,
        address: u64,
        open_time: u64,
        symbols: &mut dyn Symbolizer,
    ) -> Frame {
        if let Some(&since) = self.modules_lost_since.get(&(pid, start_key))
            && (open_time == 0 || open_time >= since)
        {
            return Frame {
                address,
                module: None,
                offset: None,
                symbol: None,
                nearest_export: None,
                text: format!(
                    "{address:#018x} (not attributed: the process mapped more images than the driver records)"
                ),
            };
        }
        let Some(m) = self.module_at(pid, start_key, address, open_time) else {
            return Frame {
                address,
                module: None,
                offset: None,
                symbol: None,
                nearest_export: None,
                text: format!("{address:#018x} (no module)"),
            };
        };
        let offset = address - m.base;
        let found = m
            .path
            .as_deref()
            .and_then(|p| symbols.symbolize(p, m.base, m.size, address));
        let (symbol, nearest_export, text) = match found {
            Some(Symbol::Function(f)) => {
                let text = format!("{}!{f}", m.name());
                (Some(f), None, text)
            }
            Some(Symbol::NearestExport(e)) => {
                let text = format!("{}+{offset:#x} (no symbols; nearest export {e})", m.name());
                (None, Some(e), text)
            }
            None => (None, None, format!("{}+{offset:#x}", m.name())),
        };
        Frame {
            address,
            module: m.path.clone(),
            offset: Some(offset),
            symbol,
            nearest_export,
            text,
        }
    }

    /// Sets every key's [`HeldKey::stack`] in `report`, and its stack coverage.
    pub fn annotate(&self, report: &mut HoldersReport, symbols: &mut dyn Symbolizer) {
        for h in &mut report.holders {
            let (pid, start_key) = (h.pid, h.start_key);
            for k in &mut h.keys {
                let mut stack = self.resolve(pid, start_key, k, symbols);
                if h.wow64 && !stack.frames.is_empty() {
                    // Its registry calls come through the 64-bit Wow64 layer: the frames
                    // are that layer's (audit 20a, M2), and "partial" says nothing more.
                    stack.flags.retain(|f| f != "may_be_partial");
                    stack.flags.push("wow64".to_owned());
                }
                k.stack = Some(stack);
            }
        }
        report.stacks = Some(self.coverage.clone());
    }
}
