//! Round trips and bit layouts of the raw entry views ([`L1Entry`], [`RawL2Entry`],
//! [`Subclusters`]) and [`L2Entry::encode`].
use super::*;

const CB: u32 = 16;

#[test]
fn l1_entry_bits() {
    let e = L1Entry::owned(0x50000);
    assert_eq!(e.raw(), 0x8000_0000_0005_0000);
    assert!(e.copied() && !e.has_reserved_bits());
    assert_eq!(e.l2_offset(), 0x50000);
    assert_eq!(e.l2_table(0, 1 << CB).unwrap(), Some(0x50000));
    assert_eq!(e.with_copied(false).raw(), 0x50000);
    assert_eq!(e.with_copied(false).with_copied(true), e);
    assert_eq!(L1Entry::UNALLOCATED.l2_table(0, 1 << CB).unwrap(), None);
    // Raw views keep what validation refuses.
    let bad = L1Entry::from_raw(0x0000_0000_0005_0201);
    assert!(bad.has_reserved_bits());
    assert_eq!(bad.l2_offset(), 0x50200);
    assert!(bad.l2_table(7, 1 << CB).is_err());
}

#[test]
fn raw_l2_entry_bits() {
    let e = RawL2Entry::owned(0x250000);
    assert_eq!(e.raw(), 0x8000_0000_0025_0000);
    assert!(e.copied() && !e.is_compressed() && !e.zero_flag() && !e.has_reserved_bits());
    assert_eq!(e.host_offset(), 0x250000);
    assert!(e.is_owned(false) && e.is_owned(true));
    assert_eq!(e.with_copied(false).raw(), 0x250000);
    assert!(!e.with_copied(false).is_owned(false));
    // Zero flag: owned only with extended L2 (where decoding refuses it).
    let z = RawL2Entry::from_raw(e.raw() | 1);
    assert!(z.zero_flag() && !z.is_owned(false) && z.is_owned(true));
    assert_eq!(RawL2Entry::ZERO.raw(), 1);
    assert!(!RawL2Entry::UNALLOCATED.is_owned(true));
    assert!(RawL2Entry::from_raw(0x25_0002).has_reserved_bits());
    // A compressed entry: its descriptor, whatever the flags.
    let d = CompressedDescriptor {
        offset: 0x12345,
        size: 3 * 512 - 0x145,
    };
    let c = RawL2Entry::from_raw(d.encode(CB));
    assert!(c.is_compressed() && !c.is_owned(false));
    assert_eq!(c.compressed(CB), d);
    assert_eq!(c.with_copied(true).compressed(CB), d);
}

#[test]
fn subcluster_masks_and_updates() {
    assert_eq!(Subclusters::span(0, 0), 1);
    assert_eq!(Subclusters::span(2, 4), 0b11100);
    assert_eq!(Subclusters::span(0, 31), u32::MAX);
    assert_eq!(Subclusters::span(31, 31), 1 << 31);
    let bm = Subclusters::from_raw(1 | 1 << (32 + 1));
    assert_eq!((bm.allocated(), bm.zeros()), (1, 2));
    assert!(bm.is_allocated(0) && bm.is_zero(1) && !bm.is_allocated(1));
    assert!(bm.holds(1) && !bm.holds(0b11));
    assert_eq!(bm.conflicts(), 0);
    // Allocating subclusters 1..=2 clears the zero bit of 1.
    let a = bm.with_allocated(Subclusters::span(1, 2));
    assert_eq!(a.raw(), 0b111);
    assert!(a.holds(0b111));
    // Zeroing 0..=1 clears their allocation and keeps 2.
    let z = a.with_zero(Subclusters::span(0, 1));
    assert_eq!(z.raw(), 0b100 | 0b11 << 32);
    assert_eq!(Subclusters::NONE.with_zero(u32::MAX), Subclusters::ALL_ZERO);
    assert_eq!(Subclusters::from_raw(1 | 1 << 32).conflicts(), 1);
}

#[test]
fn l2_entries_round_trip() {
    let d = CompressedDescriptor {
        offset: 0x12345,
        size: 3 * 512 - 0x145,
    };
    let sub = Some(Subclusters::from_raw(0b101 | 0b10 << 32));
    let cases = [
        (ClusterKind::Unallocated, false, None),
        (ClusterKind::Normal(0x250000), true, None),
        (ClusterKind::Normal(0x250000), false, None),
        (ClusterKind::Zero(0), false, None),
        (ClusterKind::Zero(0x30000), true, None),
        (ClusterKind::Compressed(d), false, None),
        (ClusterKind::Unallocated, false, Some(Subclusters::ALL_ZERO)),
        (ClusterKind::Normal(0x40000), true, sub),
        (ClusterKind::Compressed(d), false, Some(Subclusters::NONE)),
    ];
    for (kind, copied, bitmap) in cases {
        let e = L2Entry {
            kind,
            copied,
            bitmap,
        };
        let (word, bm) = e.encode(CB);
        let ext = bitmap.map(|_| bm);
        assert_eq!(word.decode(ext, CB, 0).unwrap(), e, "{e:?}");
        assert_eq!(
            L2Entry::decode(word.raw(), ext.map(Subclusters::raw), CB, 0).unwrap(),
            e
        );
    }
    let owned = L2Entry {
        kind: ClusterKind::Normal(0x250000),
        copied: true,
        bitmap: None,
    };
    assert_eq!(owned.encode(CB).0, RawL2Entry::owned(0x250000));
}
