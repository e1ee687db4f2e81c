//! Prometheus metrics on `[metrics] listen` (OpenMetrics text), served by
//! axum and hyper on the daemon's runtime. Each scrape asks the policy writer for one
//! snapshot (the counters `stats` shows, entries, feeds, flows), so the
//! numbers agree with each other and with the CLI; the control socket is
//! another listener and never waits for a scrape.
//!
//! Anyone on the host can connect, so the listener has a budget of its own:
//! at most [`MAX_CONNECTIONS`] at once (more are closed at once), each
//! given [`REQUEST_TIMEOUT`] to send its request and [`CONNECTION_TIMEOUT`]
//! in all, one request a connection. Idle or slow clients cannot hold the
//! daemon's descriptors, which the control socket needs.

use std::{
    sync::{Arc, mpsc},
    time::Duration,
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::{Semaphore, oneshot};
use tracing::warn;

pub mod render;

use self::render::{CONTENT_TYPE, Snapshot, WriterSnapshot, render};
use super::{limits::Throttle, writer::Job};

/// Longest a scrape waits for the policy writer (busy with a large reload).
const WRITER_WAIT: Duration = Duration::from_secs(10);
/// Metrics connections open at once; past this, new ones are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request's head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may last in all (one request, one answer).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `/metrics` on `listener` until the daemon stops.
pub async fn serve(listener: tokio::net::TcpListener, jobs: mpsc::Sender<Job>) {
    // One per-entry report is built at a time, whatever the clients do
    // (one that went away leaves its build running to the end).
    let entry_reports = Arc::new(Semaphore::new(1));
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (jobs, entry_reports) = (jobs.clone(), Arc::clone(&entry_reports));
            async move { scrape(&jobs, entry_reports).await }
        }),
    );
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = Throttle::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!(error = %err, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            if let Some(held_back) = refusals.due(()) {
                let peer = stream.peer_addr().ok();
                warn!(peer = ?peer, also_refused_since_last_logged = held_back, "metrics connection refused: {MAX_CONNECTIONS} are open");
            }
            // Dropped: closed at once.
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

async fn scrape(
    jobs: &mpsc::Sender<Job>,
    entry_reports: Arc<Semaphore>,
) -> axum::response::Response {
    let (reply, answer) = oneshot::channel();
    if jobs.send(Job::Metrics(reply)).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping\n").into_response();
    }
    let Ok(Ok(answer)) = tokio::time::timeout(WRITER_WAIT, answer).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the policy writer is busy (a large reload?); try again\n",
        )
            .into_response();
    };
    match with_entry_usage(answer, entry_reports).await {
        Ok(None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "a per-entry report is being built for another scrape; try again\n",
        )
            .into_response(),
        Ok(Some(snapshot)) => (
            [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
            render(snapshot),
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}\n")).into_response(),
    }
}

/// The writer's snapshot, with the per-entry counters built beside the
/// writer when asked for, one build at a time (`None`: another runs).
async fn with_entry_usage(
    answer: WriterSnapshot,
    entry_reports: Arc<Semaphore>,
) -> anyhow::Result<Option<Snapshot>> {
    let (mut snapshot, view) = answer?;
    if let Some(mut view) = view {
        let Ok(building) = entry_reports.try_acquire_owned() else {
            return Ok(None);
        };
        let usage = tokio::task::spawn_blocking(move || {
            let _building = building;
            view.entries_report()
        })
        .await??;
        snapshot.entry_usage = Some(usage);
    }
    Ok(Some(snapshot))
}
