//! The only code that turns packet offsets into pointers.

use core::{
    arch::asm,
    mem::{MaybeUninit, size_of},
};

/// Deepest header offset the parser reads at. Checking it before every
/// access keeps the offset's range known to the verifier, and no header
/// we parse can start later (2 VLAN tags + IPv4/IPv6 + 6 extension headers
/// of at most 2 KiB each is far less).
const MAX_OFFSET: usize = 16 * 1024;

/// A read position in the frame. Every read checks the end of the frame.
pub struct Cursor {
    data: usize,
    end: usize,
    /// Offset of the next unread byte from the start of the frame.
    pub offset: usize,
}

impl Cursor {
    /// A cursor over the frame from `data` to `end`, as XDP and TC
    /// contexts give them.
    #[inline(always)]
    pub fn new(data: usize, end: usize) -> Self {
        Self {
            data,
            end,
            offset: 0,
        }
    }

    /// The `T` at the cursor, advancing past it; `None` if the frame ends first.
    #[inline(always)]
    pub fn read<T: Copy>(&mut self) -> Option<T> {
        let value = self.peek::<T>()?;
        self.offset += size_of::<T>();
        Some(value)
    }

    /// The `T` at the cursor without advancing.
    #[inline(always)]
    pub fn peek<T: Copy>(&self) -> Option<T> {
        if self.offset > MAX_OFFSET {
            return None;
        }
        let start = self.data + self.offset;
        if start + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `start..start + size_of::<T>()` lies inside the frame (checked
        // just above), and every header type is built from byte arrays, so any
        // bytes are a valid one.
        Some(unsafe { load(start) })
    }

    /// Moves past `len` bytes the parser does not need (IPv4 options,
    /// extension header bodies). The next read checks they exist.
    #[inline(always)]
    pub fn skip(&mut self, len: usize) {
        self.offset += len;
    }
}

/// Copies the `T` at `start` out of the frame a word at a time.
///
/// Header types have alignment 1, and LLVM's BPF backend reads anything
/// less aligned than its size a byte at a time: four loads and six shifts
/// and ors for an IPv4 address. The instruction set has no such limit on
/// packet memory, so the words are loaded with instructions written out
/// here. The verifier takes any word load where the architecture reads
/// unaligned words cheaply (x86-64, arm64). Elsewhere it checks alignment
/// as if the frame started 2 bytes past a 4-byte boundary (`NET_IP_ALIGN`),
/// so that the IP header is 4-byte aligned. Every word read here is
/// aligned in that model: VLAN tags and each header from the IP header on
/// start at 14 plus a multiple of 4, and the Ethernet type, a half word at
/// 12, is the only field read ahead of them. (No such architecture is
/// tested here.) Marked pure, the loads of bytes nothing reads are left
/// out.
///
/// # Safety
/// `start..start + size_of::<T>()` must lie inside the frame, checked by
/// the caller in a way the verifier sees; any bytes must be a valid `T`.
#[inline(always)]
unsafe fn load<T: Copy>(start: usize) -> T {
    const { assert!(size_of::<T>() % 2 == 0 && size_of::<T>() <= 40) };
    let mut value = MaybeUninit::<T>::uninit();
    let bytes = value.as_mut_ptr().cast::<u8>();
    /// One load instruction of a `$width` at `start + $at`, stored at
    /// `bytes + $at`.
    macro_rules! copy {
        ($width:ident, $at:literal) => {{
            let loaded: $width;
            asm!(
                concat!("{loaded} = *(", stringify!($width), " *)({start} + ", $at, ")"),
                loaded = lateout(reg) loaded,
                start = in(reg) start,
                options(pure, readonly, nostack, preserves_flags),
            );
            bytes.add($at).cast::<$width>().write_unaligned(loaded);
        }};
    }
    macro_rules! copy_all {
        ($($at:literal)+) => {$(
            if $at + 4 <= size_of::<T>() {
                copy!(u32, $at);
            } else if $at + 2 <= size_of::<T>() {
                copy!(u16, $at);
            }
        )+};
    }
    // SAFETY: each load lies inside the frame (the caller's contract) and
    // each store inside `value`; together they write all of it.
    unsafe {
        copy_all!(0 4 8 12 16 20 24 28 32 36);
        value.assume_init()
    }
}
