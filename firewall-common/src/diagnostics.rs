//! The programs' rare diagnostic events, which they report through
//! aya-log and the daemon forwards into its log with the program's name.
//!
//! None is on the path a packet normally takes, and none is reported per
//! packet: each program counts each kind per CPU and reports its 1st, 2nd,
//! 4th, 8th... occurrence ([`reported`]), with the count, so a flood of
//! them costs a counter increment each and writes a record only
//! logarithmically often.

/// What happened: its index in the programs' per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// A span of the live policy slot reaches outside that slot's rows:
    /// the policy maps do not match `ACTIVE` (damaged, or adopted from a
    /// writer that disagrees). The lookup finds nothing there rather than
    /// answer from another slot's rows.
    SpanOutsideSlot = 0,
    /// The egress program could not insert a new flow, for a reason other
    /// than another CPU inserting it first.
    FlowInsertFailed = 1,
    /// The blocked-traffic sample ring was full: a sample was lost.
    SampleRingFull = 2,
}

/// How many kinds there are.
pub const COUNT: u32 = 3;

/// Whether the `count`th occurrence of a kind on a CPU is reported.
#[inline(always)]
pub const fn reported(count: u64) -> bool {
    count.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_occurrences_are_reported_twenty_times() {
        assert_eq!((1..=1_000_000).filter(|count| reported(*count)).count(), 20);
        let mut first = (1..).filter(|count| reported(*count));
        assert_eq!([(); 5].map(|()| first.next().unwrap()), [1, 2, 4, 8, 16]);
        assert!(!reported(0));
    }

    #[test]
    fn every_kind_has_a_counter() {
        assert_eq!(Diagnostic::SampleRingFull as u32 + 1, COUNT);
    }
}
