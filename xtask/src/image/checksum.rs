//! The PE image checksum (`IMAGE_OPTIONAL_HEADER::CheckSum`), as Windows computes it.
//!
//! The algorithm (what `CheckSumMappedFile` and `link.exe /RELEASE` use, and what the kernel
//! loader verifies for boot and crash-dump drivers): the 16-bit one's-complement sum of the
//! whole file taken as little-endian 16-bit words, with the checksum field itself counted as
//! zero and an odd trailing byte padded with a zero byte, folded to 16 bits, plus the file
//! length.

/// Byte offset of `CheckSum` inside the optional header; the same for PE32 and PE32+.
pub const CHECKSUM_OFFSET_IN_OPTIONAL_HEADER: usize = 64;

/// Size of the PE signature (`PE\0\0`) plus the COFF file header that precede the optional
/// header.
const SIGNATURE_AND_FILE_HEADER: usize = 4 + 20;

/// Offset of the `e_lfanew` field (file offset of the PE signature) in the DOS header.
const E_LFANEW_OFFSET: usize = 0x3c;

/// File offset of the 4-byte `CheckSum` field of the PE image `data`, or `None` when the
/// headers are too short to contain it.
#[must_use]
pub fn checksum_field_offset(data: &[u8]) -> Option<usize> {
    let raw = data.get(E_LFANEW_OFFSET..E_LFANEW_OFFSET + 4)?;
    let e_lfanew = usize::try_from(u32::from_le_bytes(raw.try_into().ok()?)).ok()?;
    let offset = e_lfanew
        .checked_add(SIGNATURE_AND_FILE_HEADER)?
        .checked_add(CHECKSUM_OFFSET_IN_OPTIONAL_HEADER)?;
    (offset.checked_add(4)? <= data.len()).then_some(offset)
}

/// Computes the PE checksum of `data`, treating the four bytes at `checksum_offset` as zero.
///
/// Returns `None` when the file is too large for a PE checksum (over 4 GiB).
#[must_use]
pub fn pe_checksum(data: &[u8], checksum_offset: usize) -> Option<u32> {
    let length = u32::try_from(data.len()).ok()?;
    let field = checksum_offset..checksum_offset.saturating_add(4);
    let byte_at = |position: usize| {
        if field.contains(&position) {
            0
        } else {
            data.get(position).copied().unwrap_or(0)
        }
    };
    let mut sum: u32 = 0;
    for position in (0..data.len()).step_by(2) {
        let word = u16::from_le_bytes([byte_at(position), byte_at(position + 1)]);
        sum += u32::from(word);
        // End-around carry: keep the running sum within 17 bits.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    Some(sum.wrapping_add(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference implementation written differently on purpose: sum everything in 64 bits and
    /// fold once at the end (one's-complement addition is associative, so both must agree).
    fn fold_at_end(data: &[u8], checksum_offset: usize) -> u32 {
        let mut bytes = data.to_vec();
        bytes[checksum_offset..checksum_offset + 4].fill(0);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u64 = bytes
            .chunks_exact(2)
            .map(|w| u64::from(u16::from_le_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        u32::try_from(sum).unwrap() + u32::try_from(data.len()).unwrap()
    }

    /// Deterministic xorshift bytes, so the test data is varied but reproducible.
    fn pseudo_random_bytes(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    #[test]
    fn zero_file_sums_to_its_length() {
        assert_eq!(pe_checksum(&[0; 0x400], 0xd8), Some(0x400));
    }

    #[test]
    fn words_are_little_endian() {
        // 0x0201 + 0x0403 = 0x0604, plus length 8 (checksum field at 4..8 is ignored).
        let data = [0x01, 0x02, 0x03, 0x04, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(pe_checksum(&data, 4), Some(0x0604 + 8));
    }

    #[test]
    fn carries_wrap_around_into_the_low_bits() {
        // 0xffff + 0x0002 = 0x1_0001 -> folded to 0x0002; plus length 8.
        let data = [0xff, 0xff, 0x02, 0x00, 0, 0, 0, 0];
        assert_eq!(pe_checksum(&data, 4), Some(0x0002 + 8));
    }

    #[test]
    fn odd_trailing_byte_is_padded_with_zero() {
        // Words 0x0000 (checksum field 0..4 ignored), then the lone 0x7f as 0x007f; length 5.
        let data = [0xaa, 0xbb, 0xcc, 0xdd, 0x7f];
        assert_eq!(pe_checksum(&data, 0), Some(0x7f + 5));
    }

    #[test]
    fn stored_checksum_does_not_change_the_result() {
        let mut data = pseudo_random_bytes(0x801, 0x1234_5678);
        let before = pe_checksum(&data, 0x100);
        data[0x100..0x104].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
        assert_eq!(pe_checksum(&data, 0x100), before);
    }

    #[test]
    fn agrees_with_fold_at_end_reference_on_varied_inputs() {
        for (len, seed) in [(0x200, 1), (0x1001, 2), (0x3ffe, 3), (0x10_0003, 4)] {
            let data = pseudo_random_bytes(len, seed);
            assert_eq!(
                pe_checksum(&data, 0x40),
                Some(fold_at_end(&data, 0x40)),
                "len {len:#x}"
            );
        }
    }

    #[test]
    fn field_offset_follows_e_lfanew() {
        let mut data = vec![0u8; 0x200];
        data[0x3c..0x40].copy_from_slice(&0x80_u32.to_le_bytes());
        assert_eq!(checksum_field_offset(&data), Some(0x80 + 24 + 64));
        data[0x3c..0x40].copy_from_slice(&0x1f0_u32.to_le_bytes());
        assert_eq!(checksum_field_offset(&data), None, "field past end of file");
        assert_eq!(checksum_field_offset(&data[..0x20]), None, "no e_lfanew");
    }
}
