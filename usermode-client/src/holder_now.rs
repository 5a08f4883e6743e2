//! The holder now of each tracked key: which processes hold a handle to it at this moment.
//!
//! The driver's records name the process that opened a key; `DuplicateHandle` and handle
//! inheritance hand keys to other processes with no registry notification. The system handle
//! table lists every handle with its process; for each key handle of another process the
//! client makes a duplicate in its own process and asks the driver
//! (`IOCTL_HIVETRACK_IDENTIFY_HANDLES`, at most 2,048 a request) which tracked key object it
//! refers to. The driver resolves the duplicates in the caller's own handle table and
//! answers with key ids, never addresses; the duplicates are closed at once.
//!
//! Only the report's hive is asked about: each duplicate is named first (`NtQueryKey`,
//! `KeyNameInformation`), and one whose key is in another hive the driver lists is closed
//! unasked (counted). A name under no listed mount is asked about: `NtQueryKey` runs the
//! registry callbacks, and a virtualizing filter may hand back a name of its own (review 16).
//! The driver answers each request with one pass over its records, so asking about every key
//! handle of the system made a `holders` cost (all key handles / 64) passes, on a terminal
//! server hundreds of thousands of handles; now it is this hive's handles / 2,048 (protocol
//! 4). A duplicate that cannot be named (a deleted key, no `NtQueryKey`) is asked about. The
//! driver's working memory for a request grows with it (48 bytes a handle): a request it
//! cannot allocate for is asked again in halves, down to 64 handles.
//!
//! What it cannot see: handles of processes it may not duplicate from (protected
//! processes), counted as not examined; kernel references that are not handles.

use std::collections::BTreeMap;

use protocol::identify::{IdentifyAnswer, IdentifyOutcome, IdentifyRequest, MAX_IDENTIFY};
use protocol::ioctl::{IOCTL_HIVETRACK_GET_VERSION, IOCTL_HIVETRACK_IDENTIFY_HANDLES};
use protocol::version::VersionInfo;
use protocol::wire;

use crate::transport::{ERROR_NO_SYSTEM_RESOURCES, Transport, TransportError};

/// Who holds each tracked key now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldNow {
    /// Key id → the processes holding a handle to that key object now (pid order, a pid
    /// once per handle).
    pub by_id: BTreeMap<u64, Vec<u64>>,
    /// Key handles of other processes examined (duplicated and identified).
    pub examined: u64,
    /// Key handles that could not be duplicated (protected processes, closed meanwhile).
    pub not_examined: u64,
    /// Key handles duplicated and found, by their key's name, to be in another hive: not
    /// asked about.
    pub other_hives: u64,
}

/// True when the key named `name` (`\REGISTRY\…`) is in the hive mounted at `mount`: the
/// mount itself or below it, compared as the driver files names under mounts
/// ([`protocol::text::eq_folded`]).
fn in_hive(name: &str, mount: &str) -> bool {
    let (name, mount): (Vec<u16>, Vec<u16>) = (
        name.encode_utf16().collect(),
        mount.encode_utf16().collect(),
    );
    name.get(..mount.len())
        .is_some_and(|head| protocol::text::eq_folded(head, &mount))
        && name.get(mount.len()).is_none_or(|&u| u == u16::from(b'\\'))
}

/// Asks the system and the driver who holds each tracked key of the hive mounted at `mount`
/// now; `mounts`: every hive the driver lists (a handle named in another of them is not
/// asked about).
///
/// # Errors
/// Why it cannot be done, in words: the backend cannot read the handle table, the system
/// refused, the driver is too old for the request, or an answer is malformed.
pub fn held_now(t: &mut dyn Transport, mount: &str, mounts: &[String]) -> Result<HeldNow, String> {
    let mut buf = [0u8; 256];
    let n = t
        .ioctl(IOCTL_HIVETRACK_GET_VERSION, &[], &mut buf)
        .map_err(|e| format!("the driver's version: {e}"))?;
    let version = wire::decode::<VersionInfo>(&buf[..n.min(buf.len())])
        .map_err(|e| format!("the driver's version answer: {e}"))?;
    if !version.has(VersionInfo::CAP_IDENTIFY_HANDLES) {
        return Err(format!(
            "driver {version} cannot identify handles (IOCTL_HIVETRACK_IDENTIFY_HANDLES): only the opener is known"
        ));
    }
    let handles = match t.foreign_key_handles() {
        None => {
            return Err(format!(
                "the {} backend cannot read the system handle table",
                t.backend()
            ));
        }
        Some(Err(e)) => return Err(format!("the system handle table: {e}")),
        Some(Ok(h)) => h,
    };
    let mut out = HeldNow::default();
    let mut rest = handles.into_iter();
    loop {
        // Up to a request's worth of this hive's duplicates.
        let mut dups: Vec<(u64, u64)> = Vec::with_capacity(MAX_IDENTIFY);
        for (pid, h) in rest.by_ref() {
            let Some(d) = t.duplicate_handle(pid, h) else {
                out.not_examined += 1;
                continue;
            };
            let elsewhere = t.key_name(d).is_some_and(|name| {
                !in_hive(&name, mount) && mounts.iter().any(|m| in_hive(&name, m))
            });
            if elsewhere {
                t.close_duplicate(d);
                out.other_hives += 1;
                continue;
            }
            dups.push((pid, d));
            if dups.len() == MAX_IDENTIFY {
                break;
            }
        }
        if dups.is_empty() {
            break;
        }
        let result = identify(t, &dups);
        for &(_, d) in &dups {
            t.close_duplicate(d);
        }
        for (outcome, id, pid) in result? {
            out.examined += 1;
            if outcome == IdentifyOutcome::Tracked {
                out.by_id.entry(id).or_default().push(pid);
            }
        }
    }
    for pids in out.by_id.values_mut() {
        pids.sort_unstable();
    }
    Ok(out)
}

/// The smallest request [`identify`] splits a refused one into (the limit before protocol 4).
const SMALLEST_SPLIT: usize = 64;

/// Identify requests for `dups` (`(holder pid, local duplicate)`), their answers with the
/// holder pids. A request the driver cannot allocate for (`STATUS_INSUFFICIENT_RESOURCES`:
/// non-paged pool is short, or Driver Verifier's low-resources simulation) is sent again in
/// two halves, down to [`SMALLEST_SPLIT`] handles.
fn identify(
    t: &mut dyn Transport,
    dups: &[(u64, u64)],
) -> Result<Vec<(IdentifyOutcome, u64, u64)>, String> {
    match identify_once(t, dups) {
        Err(Refused::NoMemory) if dups.len() > SMALLEST_SPLIT => {
            let (a, b) = dups.split_at(dups.len() / 2);
            let mut answers = identify(t, a)?;
            answers.extend(identify(t, b)?);
            Ok(answers)
        }
        Err(Refused::NoMemory) => Err(format!(
            "IOCTL_HIVETRACK_IDENTIFY_HANDLES: the system could not allocate memory for a request of {} handles (Win32 error {ERROR_NO_SYSTEM_RESOURCES}); try again when the system has more free non-paged pool",
            dups.len()
        )),
        Err(Refused::Other(e)) => Err(e),
        Ok(answers) => Ok(answers),
    }
}

/// Why one identify request got no answer.
enum Refused {
    /// The driver could not allocate its working memory for it.
    NoMemory,
    /// Anything else, as the report says it.
    Other(String),
}

/// One identify request for `dups`.
fn identify_once(
    t: &mut dyn Transport,
    dups: &[(u64, u64)],
) -> Result<Vec<(IdentifyOutcome, u64, u64)>, Refused> {
    let handles: Vec<u64> = dups.iter().map(|d| d.1).collect();
    let Some(request) = IdentifyRequest::new(&handles) else {
        return Ok(Vec::new()); // nothing duplicated in this batch
    };
    let mut input = vec![0u8; wire::HEADER_LEN + 8 + 8 * handles.len()];
    let len = wire::encode(&request, &mut input).map_err(|e| Refused::Other(e.to_string()))?;
    let mut output = vec![0u8; IdentifyAnswer::encoded_len(handles.len())];
    let n = t
        .ioctl(IOCTL_HIVETRACK_IDENTIFY_HANDLES, &input[..len], &mut output)
        .map_err(|e| match e {
            TransportError::Request {
                code: ERROR_NO_SYSTEM_RESOURCES,
            } => Refused::NoMemory,
            e => Refused::Other(format!("IOCTL_HIVETRACK_IDENTIFY_HANDLES: {e}")),
        })?;
    let malformed = |why: String| {
        Refused::Other(format!(
            "the driver sent a malformed identify answer: {why}"
        ))
    };
    let answer = wire::decode::<IdentifyAnswer>(&output[..n.min(output.len())])
        .map_err(|e| malformed(e.to_string()))?;
    if answer.len() != dups.len() {
        return Err(malformed("wrong count".to_owned()));
    }
    Ok(answer
        .entries()
        .zip(dups)
        .map(|(e, &(pid, _))| (e.outcome, e.id, pid))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TransportError;
    use protocol::identify::Identified;
    use protocol::version::BuildId;

    /// A system with key handles `(pid, handle)`, each referring to key `id` (0: untracked),
    /// `protected` pids refusing duplication, and a driver with `caps`.
    struct Fake {
        caps: u16,
        handles: Vec<(u64, u64, u64)>,
        protected: Vec<u64>,
        open: BTreeMap<u64, u64>,
        next: u64,
        requests: usize,
        /// `(pid, handle)` → the key's name (`NtQueryKey`); unnamed when absent.
        names: BTreeMap<(u64, u64), &'static str>,
        /// Duplicate → the key's name.
        dup_names: BTreeMap<u64, &'static str>,
        /// Requests of more handles than this are refused for want of memory.
        memory_for: usize,
        /// Answers one entry short.
        short_answer: bool,
    }

    impl Fake {
        fn new(caps: u16, handles: Vec<(u64, u64, u64)>, protected: Vec<u64>) -> Self {
            Self {
                caps,
                handles,
                protected,
                open: BTreeMap::new(),
                next: 0,
                requests: 0,
                names: BTreeMap::new(),
                dup_names: BTreeMap::new(),
                memory_for: usize::MAX,
                short_answer: false,
            }
        }
    }

    impl Transport for Fake {
        fn backend(&self) -> &'static str {
            "fake"
        }

        fn ioctl(
            &mut self,
            code: u32,
            input: &[u8],
            output: &mut [u8],
        ) -> Result<usize, TransportError> {
            if code == IOCTL_HIVETRACK_GET_VERSION {
                let v = VersionInfo {
                    major: 0,
                    minor: 1,
                    patch: 0,
                    capabilities: self.caps,
                    build_id: BuildId::new("test"),
                };
                return Ok(wire::encode(&v, output).unwrap());
            }
            assert_eq!(code, IOCTL_HIVETRACK_IDENTIFY_HANDLES);
            self.requests += 1;
            let req = wire::decode::<IdentifyRequest>(input).unwrap();
            if req.len() > self.memory_for {
                return Err(TransportError::Request {
                    code: ERROR_NO_SYSTEM_RESOURCES,
                });
            }
            let mut entries: Vec<Identified> = req
                .handles()
                .map(|h| match self.open.get(&h) {
                    Some(0) => Identified {
                        outcome: IdentifyOutcome::NotTracked,
                        id: 0,
                    },
                    Some(&id) => Identified {
                        outcome: IdentifyOutcome::Tracked,
                        id,
                    },
                    None => Identified {
                        outcome: IdentifyOutcome::InvalidHandle,
                        id: 0,
                    },
                })
                .collect();
            if self.short_answer {
                entries.pop();
            }
            Ok(wire::encode(&IdentifyAnswer::new(&entries).unwrap(), output).unwrap())
        }

        fn foreign_key_handles(&mut self) -> Option<Result<Vec<(u64, u64)>, TransportError>> {
            Some(Ok(self.handles.iter().map(|h| (h.0, h.1)).collect()))
        }

        fn duplicate_handle(&mut self, pid: u64, handle: u64) -> Option<u64> {
            if self.protected.contains(&pid) {
                return None;
            }
            let id = self.handles.iter().find(|h| (h.0, h.1) == (pid, handle))?.2;
            self.next += 4;
            self.open.insert(self.next, id);
            if let Some(&name) = self.names.get(&(pid, handle)) {
                self.dup_names.insert(self.next, name);
            }
            Some(self.next)
        }

        fn close_duplicate(&mut self, handle: u64) {
            assert!(self.open.remove(&handle).is_some(), "closed twice");
        }

        fn key_name(&mut self, handle: u64) -> Option<String> {
            assert!(self.open.contains_key(&handle), "named after its close");
            self.dup_names.get(&handle).map(|&n| n.to_owned())
        }
    }

    #[test]
    fn duplicates_are_identified_in_batches_and_closed() {
        // Two full requests' worth of untracked handles, and then some.
        let mut handles: Vec<(u64, u64, u64)> = (0..=(2 * MAX_IDENTIFY as u64))
            .map(|i| (100 + i % 3, 4 * i, 0))
            .collect();
        handles.push((7, 0x40, 0x5_0000_0001)); // the key, held by 7 and 8
        handles.push((8, 0x44, 0x5_0000_0001));
        handles.push((9, 0x48, 0x6_0000_0002)); // held by a protected process
        // No key can be named: every one is asked about.
        let mut t = Fake::new(VersionInfo::CAP_IDENTIFY_HANDLES, handles, vec![9]);
        let now = held_now(&mut t, HIVE, &mounts()).unwrap();
        assert_eq!(now.by_id.get(&0x5_0000_0001), Some(&vec![7, 8]));
        assert_eq!(now.by_id.get(&0x6_0000_0002), None);
        assert_eq!(
            (now.examined, now.not_examined),
            (2 * MAX_IDENTIFY as u64 + 3, 1)
        );
        assert_eq!(now.other_hives, 0);
        // Each request costs the driver one pass over all its records (issue 14): 4,099
        // handles took 65 requests of 64 before protocol 4.
        assert_eq!(t.requests, 3, "4,099 handles in requests of up to 2,048");
        assert!(t.open.is_empty(), "every duplicate closed");
    }

    /// Two requests' worth of untracked handles and the key held by 7 and 8.
    fn many() -> Vec<(u64, u64, u64)> {
        let mut handles: Vec<(u64, u64, u64)> = (0..=(2 * MAX_IDENTIFY as u64))
            .map(|i| (100 + i % 3, 4 * i, 0))
            .collect();
        handles.push((7, 0x40, 0x5_0000_0001));
        handles.push((8, 0x44, 0x5_0000_0001));
        handles
    }

    #[test]
    fn a_request_the_driver_cannot_allocate_for_is_asked_again_in_halves() {
        let mut t = Fake::new(VersionInfo::CAP_IDENTIFY_HANDLES, many(), vec![]);
        t.memory_for = 600;
        let now = held_now(&mut t, HIVE, &mounts()).unwrap();
        assert_eq!(now.by_id.get(&0x5_0000_0001), Some(&vec![7, 8]));
        assert_eq!(now.examined, 2 * MAX_IDENTIFY as u64 + 3);
        // 2,048 → 1,024 → 512 twice for each full request; the last 3 handles at once.
        assert_eq!(t.requests, 2 * (1 + 2 + 4) + 1);
        assert!(t.open.is_empty(), "every duplicate closed");
    }

    #[test]
    fn a_driver_short_of_memory_even_for_64_says_so_and_closes_every_duplicate() {
        let mut t = Fake::new(VersionInfo::CAP_IDENTIFY_HANDLES, many(), vec![]);
        t.memory_for = 10;
        let e = held_now(&mut t, HIVE, &mounts()).unwrap_err();
        assert!(
            e.contains("the system could not allocate memory for a request of 64 handles")
                && e.contains("1450"),
            "{e}"
        );
        assert!(t.open.is_empty(), "every duplicate closed");
    }

    #[test]
    fn an_answer_one_entry_short_is_an_error_and_every_duplicate_is_closed() {
        let mut t = Fake::new(VersionInfo::CAP_IDENTIFY_HANDLES, many(), vec![]);
        t.short_answer = true;
        let e = held_now(&mut t, HIVE, &mounts()).unwrap_err();
        assert!(e.contains("malformed identify answer"), "{e}");
        assert!(t.open.is_empty(), "every duplicate closed");
    }

    const HIVE: &str = r"\REGISTRY\USER\S-1-5-21-1";

    /// The hives the driver lists.
    fn mounts() -> Vec<String> {
        [
            HIVE,
            r"\REGISTRY\USER\S-1-5-21-1_Classes",
            r"\REGISTRY\MACHINE\SOFTWARE",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    #[test]
    fn only_the_hives_handles_are_asked_about() {
        // 150 handles into HKLM\SOFTWARE, one into the user's Classes hive (its mount only
        // starts like the user's), and, in the user's hive: two of one tracked key, one
        // untracked, its root spelled in another case, one unnamed (asked: it may be there),
        // one in a protected process.
        let mut handles: Vec<(u64, u64, u64)> = (0..150).map(|i| (100 + i % 3, 4 * i, 0)).collect();
        handles.extend([
            (7, 0x40, 0x5_0000_0001),
            (8, 0x44, 0x5_0000_0001),
            (8, 0x48, 0),
            (8, 0x4C, 0x7_0000_0003),
            (8, 0x50, 0x8_0000_0004),
            (8, 0x54, 0),
            (9, 0x58, 0x6_0000_0002),
            (8, 0x5C, 0x9_0000_0005),
        ]);
        let mut t = Fake::new(VersionInfo::CAP_IDENTIFY_HANDLES, handles, vec![9]);
        for i in 0..150 {
            t.names.insert(
                (100 + i % 3, 4 * i),
                r"\REGISTRY\MACHINE\SOFTWARE\Classes\CLSID",
            );
        }
        t.names.extend([
            ((7, 0x40), r"\REGISTRY\USER\S-1-5-21-1\Software"),
            ((8, 0x44), r"\REGISTRY\USER\S-1-5-21-1\Software"),
            ((8, 0x48), r"\REGISTRY\USER\S-1-5-21-1\Environment"),
            ((8, 0x4C), r"\Registry\User\s-1-5-21-1"),
            ((8, 0x54), r"\REGISTRY\USER\S-1-5-21-1_Classes\CLSID"),
            ((9, 0x58), r"\REGISTRY\USER\S-1-5-21-1\Console"),
            // A name under no hive the driver lists (a filter's virtual one): asked.
            ((8, 0x5C), r"\REGISTRY\WC\Silo1\user\Software"),
        ]);
        let now = held_now(&mut t, HIVE, &mounts()).unwrap();
        assert_eq!(
            t.requests, 1,
            "the hive's 5 handles and the unplaced one are asked"
        );
        assert_eq!(
            now.by_id.get(&0x9_0000_0005),
            Some(&vec![8]),
            "unplaced: asked"
        );
        assert_eq!(now.by_id.get(&0x5_0000_0001), Some(&vec![7, 8]));
        assert_eq!(
            now.by_id.get(&0x7_0000_0003),
            Some(&vec![8]),
            "the root itself"
        );
        assert_eq!(
            now.by_id.get(&0x8_0000_0004),
            Some(&vec![8]),
            "unnamed: asked"
        );
        assert_eq!(
            (now.examined, now.not_examined, now.other_hives),
            (6, 1, 151)
        );
        assert!(t.open.is_empty(), "every duplicate closed");
    }

    #[test]
    fn a_key_is_in_a_hive_at_its_mount_or_below() {
        assert!(in_hive(HIVE, HIVE));
        assert!(in_hive(r"\registry\user\s-1-5-21-1\x", HIVE));
        assert!(!in_hive(r"\REGISTRY\USER\S-1-5-21-1_Classes", HIVE));
        assert!(!in_hive(r"\REGISTRY\USER\S-1-5-21", HIVE));
        assert!(!in_hive(r"\REGISTRY\MACHINE", HIVE));
    }

    #[test]
    fn an_old_driver_or_a_backend_without_the_table_says_why() {
        let mut t = Fake::new(VersionInfo::CAP_WAIT_FREE, vec![], vec![]);
        let e = held_now(&mut t, HIVE, &mounts()).unwrap_err();
        assert!(e.contains("cannot identify handles"), "{e}");
    }
}
