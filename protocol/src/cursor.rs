//! The paging cursor: an opaque 40-byte position a page answer hands back and the next
//! request passes in unchanged.

use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// Size of a [`Cursor`] on the wire.
pub const CURSOR_LEN: usize = 40;

/// Where the next page starts. Only the tracker interprets the words; clients copy the
/// cursor from one answer into the next request. [`Cursor::START`] asks for the first page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cursor(pub [u64; 5]);

impl Cursor {
    /// The first page.
    pub const START: Self = Self([0; 5]);

    /// Writes the five words.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`].
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        for word in self.0 {
            w.u64(word)?;
        }
        Ok(())
    }

    /// Reads the five words.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self([r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?]))
    }
}
