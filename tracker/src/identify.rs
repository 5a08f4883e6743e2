//! Which tracked key object each of a set of kernel objects is: the lookup behind the
//! driver's identify-handles request (the holder now of a duplicated or inherited handle).
//!
//! The driver resolves the caller's handles to object addresses (holding a reference on each
//! for the duration of the request, so no address can be reused meanwhile) and asks here
//! which tracked record each is. Records are not indexed by address (an index would cost
//! every open and close), so this walks every handed-out slot once per request, shard by
//! shard under that shard's lock, checking each live record against the request's addresses
//! (sorted once, binary search): one pass over the records whatever the number of objects
//! asked, so a request of [`protocol::identify::MAX_IDENTIFY`] objects costs one pass where
//! 32 requests of the 64 before version 4 cost 32; no lock is held longer than one shard's
//! walk.

use core::sync::atomic::Ordering::Acquire;

use crate::lock::{Exclusive, RawLock};
use crate::objects::STATE_MASK;
use crate::objects::{LIVE, Token, slot_ref};
use crate::pool::Pool;
use crate::tracker::Tracker;

/// One object an identify request asks about, and what was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The object's address (0: none, as for a handle that could not be referenced; never
    /// found).
    pub object: u64,
    /// Where the caller wants the answer (its request index); carried through the sort.
    pub index: u32,
    /// The token of the live record tracking the object, filled by [`Tracker::identify`].
    pub found: Option<Token>,
}

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// Fills each entry's `found` with the token of the live record tracking its object
    /// (`None` when no record tracks it). The entries are left sorted by object (the caller
    /// finds its answers by `index`). The token is the key id of `holders` answers, never the
    /// address.
    pub fn identify(&self, wanted: &mut [Wanted]) {
        wanted.sort_unstable_by_key(|w| w.object);
        let mut left = 0;
        for w in wanted.iter_mut() {
            w.found = None;
            left += usize::from(w.object != 0);
        }
        for si in 0..=self.shard_mask {
            if left == 0 {
                break;
            }
            let shard = &self.objects[si as usize];
            let _g = Exclusive::new(&shard.lock);
            let mut index = 0;
            while let Some(rec) = shard.get(index) {
                // Slots are freed without the shard lock (`crate::objects`): the object is
                // read between two reads of the (generation, state) word, and used only when
                // both saw the same generation live (flags may change meanwhile).
                let (generation, state) = rec.read();
                // Acquire, with the opener's Release store of the object: an object written
                // after the slot was taken again is never read with the old word twice.
                let object = rec.object.load(Acquire);
                let again = rec.read();
                if object != 0
                    && state & STATE_MASK == LIVE
                    && again.0 == generation
                    && again.1 & STATE_MASK == LIVE
                    && let Ok(k) = wanted.binary_search_by_key(&object, |w| w.object)
                {
                    // Equal addresses sit side by side: answer every one of them.
                    let token = Token::new(generation, slot_ref(si, index));
                    let first = wanted[..k]
                        .iter()
                        .rposition(|w| w.object != object)
                        .map_or(0, |p| p + 1);
                    for w in wanted[first..]
                        .iter_mut()
                        .take_while(|w| w.object == object)
                    {
                        if w.found.is_none() {
                            w.found = Some(token);
                            left -= 1;
                        }
                    }
                }
                index += 1;
            }
        }
    }
}
