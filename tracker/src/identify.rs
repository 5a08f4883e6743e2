//! Which tracked key object each of a set of kernel objects is: the lookup behind the
//! driver's identify-handles request (the holder now of a duplicated or inherited handle).
//!
//! The driver resolves the caller's handles to object addresses (holding a reference on each
//! for the duration of the request, so no address can be reused meanwhile) and asks here
//! which tracked record each is. Records are not indexed by address, so this walks every
//! handed-out slot once per request, shard by shard under that shard's lock, checking each
//! live record against the request's few addresses (sorted, binary search): the cost is one
//! pass over the records whatever the number of handles asked (at most
//! [`protocol::identify::MAX_IDENTIFY`]), and no lock is held longer than one shard's walk.

use core::sync::atomic::Ordering::Acquire;

use protocol::identify::MAX_IDENTIFY;

use crate::lock::{Exclusive, RawLock};
use crate::objects::STATE_MASK;
use crate::objects::{LIVE, Token, slot_ref};
use crate::pool::Pool;
use crate::tracker::Tracker;

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// For each object address in `objects` (at most [`MAX_IDENTIFY`]; more are ignored),
    /// the token of the live record tracking it, in `out` at the same index (`None` when no
    /// record tracks it). The token is the key id of `holders` answers, never the address.
    pub fn identify(&self, objects: &[u64], out: &mut [Option<Token>]) {
        let n = objects.len().min(out.len()).min(MAX_IDENTIFY);
        let mut sorted = [(0u64, 0usize); MAX_IDENTIFY];
        for (i, (s, &o)) in sorted.iter_mut().zip(objects).take(n).enumerate() {
            *s = (o, i);
        }
        let sorted = &mut sorted[..n];
        sorted.sort_unstable();
        for o in out.iter_mut().take(n) {
            *o = None;
        }
        let mut left = n;
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
                if state & STATE_MASK == LIVE
                    && again.0 == generation
                    && again.1 & STATE_MASK == LIVE
                    && let Ok(k) = sorted.binary_search_by(|&(o, _)| o.cmp(&object))
                {
                    // Equal addresses sit side by side: answer every request index.
                    let token = Token::new(generation, slot_ref(si, index));
                    let first = sorted[..k]
                        .iter()
                        .rposition(|&(o, _)| o != object)
                        .map_or(0, |p| p + 1);
                    for &(_, i) in sorted[first..].iter().take_while(|&&(o, _)| o == object) {
                        if out[i].is_none() {
                            out[i] = Some(token);
                            left -= 1;
                        }
                    }
                }
                index += 1;
            }
        }
    }
}
