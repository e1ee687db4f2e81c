//! An in-memory [`DataPlane`] for the policy writer's tests: it keeps the
//! policies written and switched to, and fails the step a test asks it to.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use firewall_common::{maps::Counter, reasons::REASON_COUNT};

use super::{
    Attachment, CounterLedger, Counters, DataPlane, DatapathError, Delta, EntryUsageReader,
};
use crate::{
    api::{AttachMode, FlowTable},
    config::{Config, XdpModeSetting},
    policy::CompiledPolicy,
};

/// What the fake holds, and the failures to make; shared with the test.
#[derive(Debug, Default)]
pub struct FakeState {
    /// The policy packets meet, once one was switched to.
    pub live: Option<CompiledPolicy>,
    /// The policy written into the idle slot last.
    pub idle: Option<CompiledPolicy>,
    pub attached: BTreeSet<String>,
    /// Make the next idle-slot write, switch or attach fail.
    pub fail_write: bool,
    pub fail_switch: bool,
    pub fail_attach: bool,
}

/// The data plane a test hands the writer; [`FakeDataPlane::state`] is
/// the test's view of it.
pub struct FakeDataPlane(Arc<Mutex<FakeState>>);

impl FakeDataPlane {
    /// A data plane already enforcing `live`, as the daemon hands it over.
    pub fn enforcing(live: &CompiledPolicy) -> Self {
        Self(Arc::new(Mutex::new(FakeState {
            live: Some(live.clone()),
            idle: Some(live.clone()),
            ..FakeState::default()
        })))
    }

    pub fn state(&self) -> Arc<Mutex<FakeState>> {
        Arc::clone(&self.0)
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The error a failing step gives.
fn failed(step: &'static str) -> DatapathError {
    DatapathError::MissingMap { name: step }
}

impl DataPlane for FakeDataPlane {
    fn write_idle(&mut self, policy: &CompiledPolicy, _: Delta) -> Result<usize, DatapathError> {
        let mut state = self.lock();
        if std::mem::take(&mut state.fail_write) {
            // As the real one: a write that fails halfway leaves a mix.
            state.idle = None;
            return Err(failed("fake: the idle slot write fails"));
        }
        state.idle = Some(policy.clone());
        Ok(1)
    }

    fn switch(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        let mut state = self.lock();
        if std::mem::take(&mut state.fail_switch) {
            return Err(failed("fake: the switch fails"));
        }
        assert_eq!(
            state.idle.as_ref(),
            Some(policy),
            "switched to a policy the idle slot does not hold"
        );
        state.live = Some(policy.clone());
        Ok(())
    }

    fn idle_lags(&self) -> bool {
        false
    }

    fn prepare_idle(&mut self, policy: &CompiledPolicy) -> Result<(), DatapathError> {
        self.lock().idle = Some(policy.clone());
        Ok(())
    }

    fn take_changed_ledger(&mut self) -> Option<CounterLedger> {
        None
    }

    fn attach(&mut self, interface: &str, _: XdpModeSetting) -> Result<Attachment, DatapathError> {
        let mut state = self.lock();
        if std::mem::take(&mut state.fail_attach) {
            return Err(failed("fake: attaching fails"));
        }
        state.attached.insert(interface.to_string());
        Ok(Attachment {
            interface: interface.to_string(),
            mode: AttachMode::Skb,
            adopted: false,
        })
    }

    fn detach(&self, interface: &str) -> std::io::Result<()> {
        self.lock().attached.remove(interface);
        Ok(())
    }

    fn set_tracking(&mut self, _: &Config) -> Result<(), DatapathError> {
        Ok(())
    }

    fn track_egress(&mut self, _: &str) -> Result<(), DatapathError> {
        Ok(())
    }

    fn sweep_flows(&mut self, _: bool) -> Result<FlowTable, DatapathError> {
        Ok(FlowTable::default())
    }

    fn counters(&self) -> Result<Counters, DatapathError> {
        Ok(Counters {
            rules: Vec::new(),
            reasons: vec![Counter::default(); REASON_COUNT as usize],
        })
    }

    fn usage_reader(&self) -> Result<EntryUsageReader, DatapathError> {
        Ok(EntryUsageReader::empty())
    }
}
