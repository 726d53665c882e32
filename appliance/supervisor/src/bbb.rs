//! Counts BBB's meetings: a signed getMeetings every `[bbb] poll_interval`.
//! The counts feed `/metrics` and the rule that keeps core services from
//! being restarted for a failing health check while meetings run.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance_api::{BbbStatus, MeetingView};
use tokio::sync::watch;

use crate::config::BbbConfig;
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
        let res = once(&client, &cfg).await;
        account(&shared, &res);
        match res {
            Ok((_, meetings, participants, list)) => {
                if !status.up && status.error.is_some() {
                    log::info!("BBB answers again at {}", cfg.url);
                }
                status = BbbStatus {
                    up: true,
                    meetings,
                    participants,
                    last_ok: Some(unix_now()),
                    error: None,
                    list,
                };
                last_running = Some((tokio::time::Instant::now(), meetings > 0));
            }
            Err(e) => {
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

/// Feeds a poll to the usage accounting and writes a report when one is due.
fn account(shared: &Shared, res: &Result<(i64, u32, u32, Vec<MeetingView>), String>) {
    let Some(engine) = &shared.usage else { return };
    let mut e = lock(engine);
    match res {
        Ok((at, _, _, list)) => e.observe(*at, seen(list)),
        Err(_) => e.failed(),
    }
    let Some(enr) = lock(&shared.enrollment).clone() else {
        return;
    };
    let key = match crate::reports::load_or_create_key(&shared.state_dir) {
        Ok(k) => k,
        Err(err) => {
            log::error!("no node key for signing reports: {err}");
            return;
        }
    };
    let health = lock(&shared.live).health.summary.clone();
    let services = lock(&shared.services)
        .as_ref()
        .map(|s| {
            format!(
                "{} of {} services up",
                s.services.iter().filter(|x| x.up).count(),
                s.services.len()
            )
        })
        .unwrap_or_default();
    if e.maybe_report(&enr, &key, &shared.id.version, health, services) {
        shared.report_wake.notify_one();
    }
}

/// The running meetings as the accounting counts them.
pub fn seen(list: &[MeetingView]) -> Vec<appliance_usage::Seen> {
    list.iter()
        .filter(|m| m.running)
        .map(|m| appliance_usage::Seen {
            id: m.internal_id.clone(),
            member: m.member.clone(),
            participants: m.participants,
            breakout: m.breakout,
        })
        .collect()
}

async fn once(client: &reqwest::Client, cfg: &BbbConfig) -> Result<(i64, u32, u32, Vec<MeetingView>), String> {
    let secret = cfg.secret()?;
    let url = appliance_bbb::signed_url(&cfg.url, "getMeetings", &[], &secret, appliance_bbb::Algorithm::Sha256);
    let res = client
        .get(&url)
        .send()
        .await
        // The URL carries a checksum that would let anyone repeat the call: it
        // stays out of error messages.
        .map_err(|e| format!("request failed: {}", e.without_url()))?;
    if !res.status().is_success() {
        return Err(format!("HTTP {}", res.status()));
    } // Usage is charged on BBB's clock (its HTTP Date), which on a node is
    // the node's own clock; the node clock when BBB does not say.
    let at = res
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or_else(|| unix_now() as i64);
    let body = res.text().await.map_err(|e| e.to_string())?;
    let meetings = appliance_bbb::xml::parse_get_meetings(&body).map_err(|e| e.to_string())?;
    let running: Vec<_> = meetings.iter().filter(|m| m.running).collect();
    let participants = running.iter().map(|m| m.participant_count).sum();
    Ok((
        at,
        running.len() as u32,
        participants,
        views(&meetings, &cfg.member_key),
    ))
}

/// Meetings for the admin page, each attributed to a member organisation;
/// breakout rooms take their parent's.
pub fn views(meetings: &[appliance_bbb::Meeting], member_key: &str) -> Vec<MeetingView> {
    let member_of = |m: &appliance_bbb::Meeting| m.metadata.get(member_key).filter(|v| !v.is_empty()).cloned();
    meetings
        .iter()
        .map(|m| {
            let parent = m
                .parent_meeting_id
                .as_ref()
                .and_then(|p| meetings.iter().find(|x| &x.internal_meeting_id == p));
            let member = member_of(m)
                .or_else(|| parent.and_then(member_of))
                .unwrap_or_else(|| "unassigned".into());
            MeetingView {
                id: m.meeting_id.clone(),
                internal_id: m.internal_meeting_id.clone(),
                name: m.name.clone(),
                member,
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
