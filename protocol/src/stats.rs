//! The stats message: gauges, event totals and every completeness counter, by name.
//!
//! Body: field count u32 (must equal [`Stats::FIELD_COUNT`]), reserved u32, then that many
//! u64 values in the order of [`Stats::NAMES`]. Loss counters (events the tracker could not
//! record fully) are the fields listed in [`Stats::LOSS_NAMES`]; their sum is the
//! `not_recorded` figure every page carries. The budget fields (gauges) come last.

use crate::wire::{DecodeError, EncodeError, Message, MessageKind, Reader, Writer};

macro_rules! stats {
    (
        gauges { $( $(#[$gm:meta])* $g:ident, )* }
        events { $( $(#[$em:meta])* $e:ident, )* }
        losses { $( $(#[$lm:meta])* $l:ident, )* }
        budget { $( $(#[$bm:meta])* $b:ident, )* }
    ) => {
        /// Counters of the tracker at one moment. Every field is named on the wire by its
        /// position in [`Stats::NAMES`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$gm])* pub $g: u64, )*
            $( $(#[$em])* pub $e: u64, )*
            $( $(#[$lm])* pub $l: u64, )*
            $( $(#[$bm])* pub $b: u64, )*
        }

        impl Stats {
            /// Field names, in wire order.
            pub const NAMES: &'static [&'static str] = &[
                $( stringify!($g), )* $( stringify!($e), )* $( stringify!($l), )*
                $( stringify!($b), )*
            ];
            /// Names of the loss (completeness) counters.
            pub const LOSS_NAMES: &'static [&'static str] = &[ $( stringify!($l), )* ];
            /// Names of the gauges (values now, not totals since start; the budget fields
            /// are gauges too).
            pub const GAUGE_NAMES: &'static [&'static str] =
                &[ $( stringify!($g), )* $( stringify!($b), )* ];
            /// Number of fields on the wire.
            pub const FIELD_COUNT: usize = Self::NAMES.len();

            /// The values in wire order.
            #[must_use]
            pub const fn values(&self) -> [u64; Self::FIELD_COUNT] {
                [ $( self.$g, )* $( self.$e, )* $( self.$l, )* $( self.$b, )* ]
            }

            /// Builds the struct from values in wire order.
            #[must_use]
            pub const fn from_values(v: [u64; Self::FIELD_COUNT]) -> Self {
                let mut i = 0;
                $( let $g = v[i]; i += 1; )*
                $( let $e = v[i]; i += 1; )*
                $( let $l = v[i]; i += 1; )*
                $( let $b = v[i]; i += 1; )*
                let _ = i;
                Self { $( $g, )* $( $e, )* $( $l, )* $( $b, )* }
            }

            /// Sum of the loss counters: events that could not be recorded fully.
            #[must_use]
            pub const fn not_recorded(&self) -> u64 {
                0u64 $( .saturating_add(self.$l) )*
            }

            /// `(name, value)` pairs, in wire order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                Self::NAMES.iter().copied().zip(self.values())
            }
        }
    };
}

stats! {
    gauges {
        /// Key objects tracked now.
        objects_tracked,
        /// Cap on tracked objects (configuration).
        objects_cap,
        /// Processes known now.
        processes_tracked,
        /// Hives known now (loaded, implicit, and unloaded ones still referenced).
        hives_tracked,
        /// Names stored now: distinct names interned (image paths, mount points, files, keys
        /// opened without the key cache) and private copies of key names fetched on a key
        /// cache miss (one per cached key, shared by its opens; rarely one more per open
        /// that raced another to cache the same key).
        names_interned,
        /// (process, hive) pairs with open keys now.
        holdings_tracked,
        /// Unload attempts kept in the history now.
        history_entries,
        /// Keys whose name is cached by the kernel's key id now (keys with tracked objects
        /// opened through the cache).
        keys_cached,
        /// Why live tracking is off, as the 32 bits of an NTSTATUS; 0 while it is on. Set by
        /// the driver (callback registration can fail: an altitude collision, or a system
        /// without `CmRegisterCallbackEx`), not by the tracker.
        tracking_status,
        /// 1 when the driver is told of process exits (its process notify routine is
        /// registered, before its registry callback): a process it reports as not exited was
        /// running when last seen. 0 when the routine could not be registered: then an
        /// exited holder may be reported as running, and the CLI looks nobody up by pid. Set
        /// by the driver.
        process_exits_tracked,
        /// Distinct open-time stacks stored now (issue 16).
        stacks_stored,
        /// Module records (mapped images of processes) kept now.
        modules_tracked,
        /// 1 when the driver is told of image loads (its load-image notify routine is
        /// registered): frames can be resolved to modules. Set by the driver.
        image_loads_tracked,
    }
    events {
        /// `opened` calls.
        opens_seen,
        /// `handle_closed` calls.
        handle_closes_seen,
        /// `object_destroyed` calls.
        destroys_seen,
        /// `hive_loaded` calls.
        hive_loads_seen,
        /// `hive_unloaded` calls.
        hive_unloads_seen,
        /// `unload_attempted` calls.
        unload_attempts_seen,
        /// `process_exited` calls.
        process_exits_seen,
        /// Handle closes beyond the opens counted (duplicated handles); not a loss.
        closes_exceeding_opens,
        /// Keys that could not be cached by key id (no memory for the cache entry): their
        /// next open asks the kernel for the name again. Not a loss: the open was tracked.
        keys_not_cached,
        /// Opens whose user-mode stack was captured and stored.
        stacks_captured,
        /// Opens in the capture scope whose thread gave no user-mode frame.
        stacks_empty,
        /// Stacks captured but not stored (no memory, or the table full): those keys are
        /// reported without a stack. Not a loss of holders.
        stacks_dropped,
        /// Image loads recorded with their path.
        image_loads_seen,
        /// Key-count alarms raised (a process reached the alarm threshold of open keys, or
        /// a doubling of it; each is an event in the stream).
        key_alarms,
        /// Image loads not recorded (no memory, the process's share used, or an unknown
        /// process), or recorded without their path (no memory for it: the range is kept,
        /// unnamed): frames in those images cannot be attributed to a file. Not a loss of
        /// holders.
        modules_dropped,
        /// Hives reported still held the configured delay after a failed unload (each an
        /// event in the stream).
        held_after_events,
    }
    losses {
        /// Opens not tracked: the object cap was reached.
        opens_dropped_cap,
        /// Opens not tracked: no memory for the object's slot.
        opens_dropped_no_memory_object,
        /// Opens not tracked: no memory for the process record.
        opens_dropped_no_memory_process,
        /// Opens not tracked: no memory for an inferred hive (or no hive id left, after
        /// 2^31 - 1 hives in one run: ids are never reused).
        opens_dropped_no_memory_hive,
        /// Opens not tracked: no memory for the (process, hive) record.
        opens_dropped_no_memory_holding,
        /// Objects tracked without their name: no memory for it.
        names_dropped_no_memory,
        /// The kernel did not give a key's name (`CmCallbackGetKeyObjectIDEx` failed): an open
        /// tracked without its name, or an unload attempt that could not be recorded; also a
        /// load the driver could not place, a hive file path recorded cut, and, while no read of
        /// the hive list has been whole, 1 for the hives it may have missed: withdrawn when a
        /// later read (before a query) takes the whole list, the only loss that goes down.
        names_unavailable,
        /// Names stored cut to the largest size class.
        names_truncated,
        /// Process images not stored: no memory.
        images_dropped_no_memory,
        /// Handle closes for an object the tracker does not know (stale or foreign context).
        closes_unknown_object,
        /// Destroys for an object the tracker does not know (stale or foreign context).
        destroys_unknown_object,
        /// Objects the driver asked to forget because it could not attach their context.
        objects_abandoned,
        /// Hive loads not recorded: no memory.
        hive_loads_dropped_no_memory,
        /// Unloads of a mount point that was not a known hive.
        unloads_unknown_hive,
        /// Exits of a process the tracker did not know.
        process_exits_unknown,
        /// Unload attempts not recorded: no memory (or no free slot to carry the mount name
        /// from the pre- to the post-notification).
        history_dropped_no_memory,
        /// Unload records that could not list every holder.
        history_holders_truncated,
        /// Opens not tracked: the opening process had used its share of the memory budget
        /// (see `top_dropper_pid`).
        opens_dropped_process_share,
        /// Opens not tracked: the kernel did not give the key's name
        /// (`CmCallbackGetKeyObjectIDEx` failed). Each is also counted against the hive the
        /// caller's path names, so that hive's reports say they are incomplete.
        opens_dropped_no_name,
        /// Failed unloads the driver could not look at again after the delay (every watch
        /// slot in use, or no memory for the event): each took a number of the event
        /// stream, so its readers count it as missed.
        held_after_unwatched,
    }
    budget {
        /// The memory budget in bytes of non-paged pool (configuration: the service key's
        /// `Parameters\MemoryBudgetMiB`, or the default).
        budget_bytes,
        /// Bytes of the budget in use now.
        budget_used_bytes,
        /// The most bytes of the budget ever in use at once.
        budget_peak_bytes,
        /// One process's share of the budget in bytes (configuration).
        process_share_bytes,
        /// Allocations refused because the budget was spent (each also counted as the loss
        /// it caused).
        allocations_refused_budget,
        /// The process with the most opens dropped for its share: pid (0 when none).
        top_dropper_pid,
        /// Its start key.
        top_dropper_start_key,
        /// Its opens dropped.
        top_dropper_drops,
        /// The process with the most opens not tracked for want of memory (an allocation
        /// refused: the budget spent, counted in `allocations_refused_budget`, or the pool
        /// failed): pid (0 when none). With every live process within its share, the budget
        /// is spent by many processes, exited ones' keys or hives: this names who is refused
        /// most, whoever filled it.
        top_refused_pid,
        /// Its start key.
        top_refused_start_key,
        /// Its opens not tracked for want of memory.
        top_refused_drops,
        /// Bytes of the budget exited processes that still hold keys keep charged for their
        /// records, image names and module lists: at most one process share, but for the
        /// records and images of those whose modules were freed at their exit (counted in
        /// `modules_dropped`).
        exited_leftover_bytes,
    }
}

impl Message<'_> for Stats {
    const KIND: MessageKind = MessageKind::Stats;

    fn body_len(&self) -> usize {
        8 + 8 * Self::FIELD_COUNT
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        #[allow(clippy::cast_possible_truncation, reason = "a few dozen fields")]
        w.u32(Self::FIELD_COUNT as u32)?;
        w.zeros(4)?;
        for v in self.values() {
            w.u64(v)?;
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.u32()? as usize != Self::FIELD_COUNT {
            return Err(DecodeError::InvalidField {
                field: "field count",
            });
        }
        r.zeros(4)?;
        let mut v = [0u64; Self::FIELD_COUNT];
        for slot in &mut v {
            *slot = r.u64()?;
        }
        Ok(Self::from_values(v))
    }
}
