//! The only code that turns packet offsets into pointers.

use core::mem::size_of;

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
        // address is aligned for it.
        Some(unsafe { *(start as *const T) })
    }

    /// Moves past `len` bytes the parser does not need (IPv4 options,
    /// extension header bodies). The next read checks they exist.
    #[inline(always)]
    pub fn skip(&mut self, len: usize) {
        self.offset += len;
    }
}
