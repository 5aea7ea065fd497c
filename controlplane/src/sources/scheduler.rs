//! Runs one `EventSchedule` on the leader: sleeps until its next tick, publishes the tick's
//! event (its id derived from the uid and the scheduled time) and records it in the status.
//!
//! Exactly once per tick: the last tick sent is in the status (`lastScheduleTime`), so a new
//! leader starts after it; a tick published but not yet recorded when a leader died is
//! published again by the next one with the same id, inside the stream's duplicate window
//! (2 minutes by default; a leader is replaced within the Lease's 15 s), and stored once.
//! A publish that fails is retried (1 s, doubling to 30 s) until it is stored or the tick is
//! overtaken by the next one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource as _, ResourceExt as _};

use super::metrics::{SourceKind, SourceResult};
use super::schedule::{Due, EventSchedule, EventScheduleStatus, Plan, rfc3339};
use super::{Ctx, patch_status, publish, ready};

const NULLABLE: [&str; 4] = [
    "lastScheduleTime",
    "lastEventId",
    "nextScheduleTime",
    "lastMissedTime",
];
/// Waits are cut into pieces of at most this, so a wall clock that jumps is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub async fn run(ctx: Ctx, es: EventSchedule) {
    let namespace = es.namespace().unwrap_or_default();
    let name = es.name_any();
    let uid = es.meta().uid.clone().unwrap_or_default();
    let generation = es.meta().generation;
    let api: Api<EventSchedule> = Api::namespaced(ctx.kube.clone(), &namespace);
    let mut status = es.status.clone().unwrap_or_default();
    let reference = es.object_ref(&());

    let plan = match Plan::new(&es.spec, &namespace, &name) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%namespace, %name, error = %e, "EventSchedule spec invalid");
            let next = EventScheduleStatus {
                conditions: vec![ready(
                    &status.conditions,
                    false,
                    "InvalidSpec",
                    &e.to_string(),
                    generation,
                )],
                next_schedule_time: None,
                observed_generation: generation,
                ..status.clone()
            };
            write(&api, &name, &mut status, next).await;
            // A change of spec restarts this task.
            return futures::future::pending().await;
        }
    };
    // Where the ticks start: after the last one sent, else after the resource was made.
    let created = es
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| to_chrono(&t.0))
        .unwrap_or_else(Utc::now);
    let mut since = status
        .last_schedule_time
        .as_ref()
        .map(|t| to_chrono(&t.0))
        .unwrap_or(created);
    // A tick skipped as too late is not looked at again.
    if let Some(missed) = status.last_missed_time.as_ref().map(|t| to_chrono(&t.0)) {
        since = since.max(missed);
    }
    let mut retry = RETRY_FIRST;
    loop {
        let now = Utc::now();
        if plan.suspend {
            let next = EventScheduleStatus {
                conditions: vec![ready(
                    &status.conditions,
                    true,
                    "Suspended",
                    "spec.suspend is true: no events are sent",
                    generation,
                )],
                next_schedule_time: None,
                observed_generation: generation,
                ..status.clone()
            };
            write(&api, &name, &mut status, next).await;
            // A change of spec restarts this task.
            return futures::future::pending().await;
        }
        match plan.due(since, now) {
            Some(Due::Fire(tick)) => {
                let ev = match plan.event(&uid, tick) {
                    Ok(ev) => ev,
                    // Checked by Plan::new with the same attributes; only the id and time differ.
                    Err(e) => {
                        tracing::error!(%namespace, %name, error = %e, "the tick's event cannot be built");
                        return futures::future::pending().await;
                    }
                };
                match publish(ctx.broker.as_ref(), &ev).await {
                    Ok(()) => {
                        retry = RETRY_FIRST;
                        let delay = (Utc::now() - tick).to_std().unwrap_or_default();
                        ctx.metrics
                            .delay(SourceKind::EventSchedule, delay.as_secs_f64());
                        ctx.metrics
                            .event(SourceKind::EventSchedule, SourceResult::Published);
                        tracing::info!(%namespace, %name, tick = %rfc3339(tick), id = %ev.id, delay_ms = delay.as_millis() as u64, "scheduled event published");
                        since = tick;
                        let next = EventScheduleStatus {
                            conditions: vec![ready(
                                &status.conditions,
                                true,
                                "Scheduled",
                                "",
                                generation,
                            )],
                            last_schedule_time: Some(to_time(tick)),
                            last_event_id: Some(ev.id.clone()),
                            next_schedule_time: plan.next(tick.max(Utc::now())).map(to_time),
                            observed_generation: generation,
                            ..status.clone()
                        };
                        write(&api, &name, &mut status, next).await;
                    }
                    Err(e) => {
                        ctx.metrics
                            .event(SourceKind::EventSchedule, SourceResult::Failed);
                        let message = format!(
                            "the event of the tick {} was not stored ({e}); retrying in {}s",
                            rfc3339(tick),
                            retry.as_secs()
                        );
                        tracing::warn!(%namespace, %name, %message);
                        let next = EventScheduleStatus {
                            conditions: vec![ready(
                                &status.conditions,
                                false,
                                "PublishFailed",
                                &message,
                                generation,
                            )],
                            observed_generation: generation,
                            ..status.clone()
                        };
                        write(&api, &name, &mut status, next).await;
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
                continue;
            }
            Some(Due::TooLate(tick)) => {
                ctx.metrics
                    .event(SourceKind::EventSchedule, SourceResult::Missed);
                let note = format!(
                    "the tick {} was found {}s late, past startingDeadlineSeconds: skipped",
                    rfc3339(tick),
                    (now - tick).num_seconds()
                );
                tracing::warn!(%namespace, %name, %note);
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: "MissedSchedule".into(),
                    note: Some(note),
                    action: "Schedule".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                    tracing::warn!(%namespace, %name, error = %e, "cannot create the MissedSchedule Event");
                }
                since = tick;
                let next = EventScheduleStatus {
                    last_missed_time: Some(to_time(tick)),
                    ..status.clone()
                };
                write(&api, &name, &mut status, next).await;
                continue;
            }
            None => {}
        }
        let next_tick = plan.next(now);
        let next = EventScheduleStatus {
            conditions: vec![ready(&status.conditions, true, "Scheduled", "", generation)],
            next_schedule_time: next_tick.map(to_time),
            observed_generation: generation,
            ..status.clone()
        };
        write(&api, &name, &mut status, next).await;
        let Some(at) = next_tick else {
            // No tick left (`0 0 30 2 *`): nothing to do until the spec changes.
            return futures::future::pending().await;
        };
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait.min(MAX_SLEEP)).await;
    }
}

/// Writes the status when it changed; a failed write is logged and tried with the next change
/// (what it records is also derivable: a new leader re-publishes with the same id).
async fn write(
    api: &Api<EventSchedule>,
    name: &str,
    current: &mut EventScheduleStatus,
    next: EventScheduleStatus,
) {
    if *current == next {
        return;
    }
    match patch_status(api, name, &next, &NULLABLE).await {
        Ok(()) => *current = next,
        Err(e) => tracing::warn!(%name, error = %e, "cannot patch the EventSchedule status"),
    }
}

fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
        .unwrap_or_else(Utc::now)
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    )
}
