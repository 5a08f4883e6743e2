//! How complete an answer about one hive is: since when the driver tracks, and which losses
//! concern the hive.
//!
//! A holders page and a wait-free answer carry it (appended after their other fields). A
//! report about a hive is complete only when tracking runs and neither the hive nor the
//! unattributed ("global") account lost an open. Losses are counted against the hive they
//! belong to whenever the path of the lost open is known; a hive's account starts empty at
//! each load (an unloaded hive has no key objects left, so its old losses cannot matter), so
//! a loss ages out with the hive it concerns. Only losses whose hive cannot be known are
//! global, and those concern every hive.
//!
//! Layout (40 bytes):
//!
//! | offset | size | field                                                                  |
//! |--------|------|------------------------------------------------------------------------|
//! | 0      | 8    | live tracking began (FILETIME); 0 = tracking is off                    |
//! | 8      | 8    | opens in this hive the tracker lost                                     |
//! | 16     | 8    | first of those losses (FILETIME); 0 when none                          |
//! | 24     | 8    | opens lost whose hive is unknown                                        |
//! | 32     | 8    | first of those (FILETIME); 0 when none                                 |

use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// Completeness of an answer about one hive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completeness {
    /// When live tracking began (FILETIME; 0 while tracking is off). Key objects opened
    /// before this moment carry no context of the driver and are not in its records.
    pub tracking_since: u64,
    /// Opens in this hive that the tracker could not record (since the hive was loaded).
    pub hive_lost: u64,
    /// When the first of them happened (0 when none).
    pub hive_lost_since: u64,
    /// Opens the tracker lost without knowing their hive: they concern every hive.
    pub global_lost: u64,
    /// When the first of them happened (0 when none).
    pub global_lost_since: u64,
}

impl Completeness {
    /// Encoded size.
    pub const LEN: usize = 40;

    /// True when tracking runs and nothing that concerns the hive was lost. (Keys opened
    /// before tracking began are not covered: only the kernel's own list can tell those.)
    #[must_use]
    pub const fn nothing_lost(&self) -> bool {
        self.tracking_since != 0 && self.hive_lost == 0 && self.global_lost == 0
    }

    /// Writes the 40 bytes.
    ///
    /// # Errors
    /// Whatever the writer reports.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.tracking_since)?;
        w.u64(self.hive_lost)?;
        w.u64(self.hive_lost_since)?;
        w.u64(self.global_lost)?;
        w.u64(self.global_lost_since)
    }

    /// Reads the 40 bytes.
    ///
    /// # Errors
    /// A truncated input.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            tracking_since: r.u64()?,
            hive_lost: r.u64()?,
            hive_lost_since: r.u64()?,
            global_lost: r.u64()?,
            global_lost_since: r.u64()?,
        })
    }
}
