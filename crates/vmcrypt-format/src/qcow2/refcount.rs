//! Refcount block entries: `1 << refcount_order` bits each (1 to 64), packed into
//! big-endian words, or from the least significant bit up inside a byte for widths
//! below 8 bits. Pure functions over a block's bytes.
use vmcrypt_error::{Result, ensure};

/// Check a `refcount_order` (0..=6).
pub fn check_order(order: u32) -> Result<()> {
    ensure!(
        order <= 6,
        Corrupt,
        "qcow2: refcount_order {order} is out of range (0 to 6)"
    );
    Ok(())
}

/// Entries in a refcount block of `1 << cluster_bits` bytes, as a power of two.
pub fn entries_bits(cluster_bits: u32, order: u32) -> u32 {
    cluster_bits + 3 - order
}

/// The largest refcount an entry holds.
pub fn max_refcount(order: u32) -> u64 {
    if order == 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

/// Entry `index` of the refcount block `block`.
pub fn get(block: &[u8], order: u32, index: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[index / per_byte];
            let shift = (index % per_byte) * bits;
            u64::from((byte >> shift) & ((1u8 << bits) - 1))
        }
        _ => {
            let n = 1usize << (order - 3);
            let start = index * n;
            block[start..start + n]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        }
    }
}

/// Set entry `index` of `block` to `value` (callers check it against [`max_refcount`]).
pub fn set(block: &mut [u8], order: u32, index: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (index % per_byte) * bits;
            let mask = ((1u8 << bits) - 1) << shift;
            let b = &mut block[index / per_byte];
            *b = (*b & !mask) | (((value as u8) << shift) & mask);
        }
        _ => {
            let n = 1usize << (order - 3);
            let start = index * n;
            let bytes = value.to_be_bytes();
            block[start..start + n].copy_from_slice(&bytes[8 - n..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_round_trip_and_do_not_touch_neighbours() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 64];
            let n = 64 * 8 >> order;
            let max = max_refcount(order);
            for i in 0..n {
                set(&mut block, order, i, (i as u64 * 7 + 1) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get(&block, order, i),
                    (i as u64 * 7 + 1) & max,
                    "order {order}"
                );
            }
            set(&mut block, order, 3, 0);
            assert_eq!(get(&block, order, 3), 0);
            assert_eq!(get(&block, order, 2), (2 * 7 + 1) & max);
            assert_eq!(get(&block, order, 4), (4 * 7 + 1) & max);
        }
    }

    #[test]
    fn layout_matches_qemu() {
        // 16-bit refcounts are big-endian words; 1-bit ones start at the low bit.
        let mut b = vec![0u8; 8];
        set(&mut b, 4, 1, 0x0102);
        assert_eq!(&b[..4], &[0, 0, 1, 2]);
        let mut b = vec![0u8; 2];
        set(&mut b, 0, 0, 1);
        set(&mut b, 0, 9, 1);
        assert_eq!(b, vec![0x01, 0x02]);
        let mut b = vec![0u8; 1];
        set(&mut b, 2, 1, 0xf);
        assert_eq!(b, vec![0xf0]);
        assert_eq!(max_refcount(4), 0xffff);
        assert_eq!(entries_bits(16, 4), 15);
    }
}
