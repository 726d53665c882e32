//! Counts BBB's meetings: a signed getMeetings every `[bbb] poll_interval`.
//! The poller only publishes: the counts and meeting list for the pages
//! and `/metrics`, "meetings are running" for the rule that keeps core
//! services from being restarted for a failing health check during a
//! meeting, and each poll (BBB's time and what was running, attributed
//! to members) to the reports task, which owns the accounting. Billing
//! figures are made from BBB's answer directly, never from the pages'
//! display types.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance_api::{BbbStatus, MeetingView};
use appliance_usage::protocol::clip_name;
use appliance_usage::{Seen, UNASSIGNED};
use tokio::sync::watch;

use crate::config::BbbConfig;
use crate::reports::Poll;
use crate::state::{Shared, lock};

/// How long a "meetings are running" answer is trusted when BBB stops
/// answering: a dead API does not mean the meetings ended.
const TRUST_LAST_ANSWER: Duration = Duration::from_secs(300);

pub async fn poll(cfg: BbbConfig, shared: Arc<Shared>, meetings_running: watch::Sender<bool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building an HTTP client with static settings");
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_running: Option<(tokio::time::Instant, bool)> = None;
    let mut status = BbbStatus::default();
    loop {
        tick.tick().await;
        match once(&client, &cfg).await {
            Ok((at, meetings)) => {
                shared.reports.poll(Poll::Ok {
                    at,
                    seen: seen(&meetings, &cfg.member_key),
                });
                if !status.up && status.error.is_some() {
                    log::info!("BBB answers again at {}", cfg.url);
                }
                let running: Vec<_> = meetings.iter().filter(|m| m.running).collect();
                status = BbbStatus {
                    up: true,
                    meetings: running.len() as u32,
                    participants: running.iter().map(|m| m.participant_count).sum(),
                    last_ok: Some(unix_now()),
                    error: None,
                    list: views(&meetings, &cfg.member_key),
                };
                last_running = Some((tokio::time::Instant::now(), !running.is_empty()));
            }
            Err(e) => {
                shared.reports.poll(Poll::Failed);
                if status.error.as_deref() != Some(e.as_str()) {
                    log::warn!("counting BBB meetings at {}: {e}", cfg.url);
                }
                status = BbbStatus {
                    up: false,
                    error: Some(e),
                    ..status
                };
            }
        }
        let running = last_running.is_some_and(|(t, r)| r && t.elapsed() < TRUST_LAST_ANSWER);
        meetings_running.send_replace(running);
        *lock(&shared.bbb) = Some(status.clone());
    }
}

/// The running meetings as the accounting counts them, each with the
/// member it is charged to (see [`appliance_bbb::member_of`]).
pub fn seen(meetings: &[appliance_bbb::Meeting], member_key: &str) -> Vec<Seen> {
    meetings
        .iter()
        .filter(|m| m.running)
        .map(|m| Seen {
            // Ops refuses longer names; a front end may send any metadata.
            id: clip_name(&m.internal_meeting_id).to_string(),
            member: clip_name(appliance_bbb::member_of(meetings, m, member_key).unwrap_or(UNASSIGNED)).to_string(),
            participants: m.participant_count,
            breakout: m.is_breakout,
        })
        .collect()
}

async fn once(client: &reqwest::Client, cfg: &BbbConfig) -> Result<(i64, Vec<appliance_bbb::Meeting>), String> {
    let secret = cfg.secret()?;
    let m = appliance_services::bbb_client::get_meetings(client, &cfg.url, &secret, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    // Usage is charged on BBB's clock (its HTTP Date), which on a node is
    // the node's own clock; the node clock when BBB does not say.
    Ok((m.date.unwrap_or_else(|| unix_now() as i64), m.meetings))
}

/// Meetings for the admin page, each attributed to a member organisation
/// by the same rule as the accounting.
pub fn views(meetings: &[appliance_bbb::Meeting], member_key: &str) -> Vec<MeetingView> {
    meetings
        .iter()
        .map(|m| {
            let parent = m
                .parent_meeting_id
                .as_ref()
                .and_then(|p| meetings.iter().find(|x| &x.internal_meeting_id == p));
            MeetingView {
                id: m.meeting_id.clone(),
                internal_id: m.internal_meeting_id.clone(),
                name: m.name.clone(),
                member: appliance_bbb::member_of(meetings, m, member_key)
                    .unwrap_or(UNASSIGNED)
                    .to_string(),
                running: m.running,
                participants: m.participant_count,
                moderators: m.moderator_count,
                video: m.video_count,
                breakout: m.is_breakout,
                parent: parent.map(|p| p.meeting_id.clone()),
                created: m.create_time,
            }
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
