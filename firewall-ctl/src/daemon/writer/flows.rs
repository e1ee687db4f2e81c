//! The flow table's sweep: timed-out flows deleted, the table counted.

use std::time::{Duration, SystemTime};

use tracing::warn;

use super::Writer;

/// How often timed-out flows are deleted and the flow table counted.
pub(super) const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

impl Writer {
    /// Deletes timed-out flows and publishes the table's counts; warns
    /// when the table evicted flows since the last sweep.
    pub(super) fn sweep_flows(&mut self) {
        self.timers.next_flow_sweep = SystemTime::now() + FLOW_SWEEP_INTERVAL;
        match self.datapath.sweep_flows(false) {
            Ok(table) => {
                let evicted_before = self.flows.map_or(table.evicted, |before| before.evicted);
                if table.evicted > evicted_before {
                    warn!(
                        evicted = table.evicted - evicted_before,
                        max_flows = table.capacity,
                        "the flow table is full: the least recently used flows were evicted, and replies to them are dropped; raise `flows.max_flows`"
                    );
                }
                self.flows = Some(table);
                self.publish();
            }
            Err(err) => warn!(error = %err, "sweeping the flow table failed"),
        }
    }
}
