//! What the kernel actually runs on each configured interface, kept
//! current from link events: an interface deleted and created again (a
//! veth rebuilt, a VLAN re-created, a driver reloaded) loses its program,
//! and is re-attached by the writer as soon as it is back.
//!
//! `status` shows this view, not what the daemon remembers attaching.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::writer::{Job, PolicyStatus};
use crate::api::{AttachMode, InterfaceState, InterfaceStatus};

/// How often the kernel is asked even without a link event (netlink
/// multicast drops events when its socket buffer overflows).
const RECHECK: Duration = Duration::from_secs(1);
/// Link events come in bursts: wait this long for the rest before checking.
const SETTLE: Duration = Duration::from_millis(20);

/// What the kernel runs on `name`: `None` if there is no such interface,
/// else the XDP program id and its mode (if any program is attached).
async fn kernel_xdp(handle: &Handle, name: &str) -> Option<(Option<u32>, Option<AttachMode>)> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let message = links.try_next().await.ok().flatten()?;
    let mut program = None;
    let mut mode = None;
    for attribute in message.attributes {
        if let LinkAttribute::Xdp(xdp) = attribute {
            for item in xdp {
                match item {
                    LinkXdp::ProgId(id) if id != 0 => program = Some(id),
                    LinkXdp::Attached(XdpAttached::Driver) => mode = Some(AttachMode::Driver),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some(AttachMode::Skb),
                    _ => {}
                }
            }
        }
    }
    Some((program, mode))
}

/// The state of every interface the config names.
pub async fn check(handle: &Handle, status: &PolicyStatus) -> Vec<InterfaceStatus> {
    let mut states = Vec::with_capacity(status.interfaces.len());
    for name in &status.interfaces {
        let (state, xdp_mode) = match kernel_xdp(handle, name).await {
            None => (InterfaceState::Missing, None),
            Some((Some(program), mode)) if program == status.program_id => {
                (InterfaceState::Protected, mode)
            }
            Some((_, mode)) => (InterfaceState::Unprotected, mode),
        };
        states.push(InterfaceStatus {
            name: name.clone(),
            xdp_mode,
            state,
        });
    }
    states
}

/// Opens the netlink connections: one subscribed to link events, one for
/// queries. Their I/O runs on tasks of the daemon's runtime.
pub fn connect() -> std::io::Result<(Handle, impl futures_util::Stream + Unpin)> {
    let (events_connection, _, events) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
    tokio::spawn(events_connection);
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok((handle, events))
}

/// Watches forever: publishes each interface's state to `interfaces`, and
/// asks the writer to attach where the kernel does not run our program.
pub async fn watch(
    handle: Handle,
    events: impl futures_util::Stream + Unpin,
    mut status: watch::Receiver<Arc<PolicyStatus>>,
    interfaces: watch::Sender<Vec<InterfaceStatus>>,
    jobs: std::sync::mpsc::Sender<Job>,
) {
    let mut reported: Vec<InterfaceStatus> = Vec::new();
    // `None` once the event stream ends: the periodic check carries on.
    let mut events = Some(events);
    loop {
        let current = status.borrow_and_update().clone();
        let states = check(&handle, &current).await;
        let unprotected: Vec<String> = states
            .iter()
            .filter(|interface| interface.state == InterfaceState::Unprotected)
            .map(|interface| interface.name.clone())
            .collect();
        for interface in &states {
            let before = reported.iter().find(|old| old.name == interface.name);
            if before.map(|old| old.state) != Some(interface.state) {
                match interface.state {
                    InterfaceState::Protected if before.is_some() => {
                        info!(
                            interface = interface.name,
                            "the interface is protected again"
                        )
                    }
                    InterfaceState::Protected => {}
                    InterfaceState::Unprotected => error!(
                        interface = interface.name,
                        "the interface is UNPROTECTED: it does not run the firewall's program; re-attaching"
                    ),
                    InterfaceState::Missing => warn!(
                        interface = interface.name,
                        "the interface is gone; the firewall attaches again when it comes back"
                    ),
                }
            }
        }
        interfaces.send_replace(states.clone());
        reported = states;
        if !unprotected.is_empty() && jobs.send(Job::Reattach(unprotected)).is_err() {
            return;
        }
        let next_event = async {
            match events.as_mut() {
                Some(stream) => stream.next().await.is_some(),
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            more = next_event => !more,
            _ = status.changed() => false,
            _ = tokio::time::sleep(RECHECK) => false,
        };
        if ended {
            error!("the link event stream ended; checking interfaces every second only");
            events = None;
        } else {
            tokio::time::sleep(SETTLE).await;
        }
    }
}
