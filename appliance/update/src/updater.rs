//! One update, start to end: refresh the trusted metadata, plan, fetch
//! and verify the target, unpack it, switch. The supervisor's update task
//! and `appliance update ...` both go through here; what they differ in
//! (when to run, whether a window or a meeting holds it back) is theirs.

use std::path::PathBuf;

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::UpdateError;
use crate::download::{Downloader, Progress};
use crate::install::{Outcome, Releases, Result_, State};
use crate::policy::{Decision, NodeView, Plan, plan};
use crate::repo::{Expiry, RoleVersions, Source, Trust, Verified};
use crate::transport::HttpTransport;

#[derive(Debug, Clone)]
pub struct Updater {
    pub trust: Trust,
    pub source: Source,
    pub client: reqwest::Client,
    pub downloader: Downloader,
    /// Where targets are downloaded to and verified.
    pub staging: PathBuf,
    pub releases: Releases,
    pub running: Version,
    pub channel: String,
    pub position: u16,
}

/// What a check found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checked {
    pub at: Timestamp,
    pub versions: RoleVersions,
    pub expires: Timestamp,
    pub plan: Plan,
}

impl Updater {
    /// The longest a metadata refresh may take: a server sending a byte a
    /// minute must not hold the node's checks for weeks.
    pub const REFRESH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

    pub async fn refresh(&self, expiry: Expiry) -> Result<Verified, UpdateError> {
        let _lock = self.trust.lock()?;
        let refresh = self
            .trust
            .refresh(&self.source, HttpTransport::new(self.client.clone()), expiry);
        tokio::time::timeout(Self::REFRESH_DEADLINE, refresh)
            .await
            .unwrap_or_else(|_| {
                Err(UpdateError::Unreachable(format!(
                    "the metadata did not arrive within {} s",
                    Self::REFRESH_DEADLINE.as_secs()
                )))
            })
    }

    pub fn plan(&self, v: &Verified, state: &State, now: Timestamp) -> Plan {
        plan(
            &v.manifest,
            &NodeView {
                running: &self.running,
                floor: state.floor_or(&self.running),
                channel: &self.channel,
                position: self.position,
                bad: &state.bad,
                now,
            },
        )
    }

    pub async fn check(&self, expiry: Expiry, now: Timestamp) -> Result<(Verified, Checked), UpdateError> {
        let v = self.refresh(expiry).await?;
        let state = self.releases.read_state(&self.running)?;
        let plan = self.plan(&v, &state, now);
        let checked = Checked {
            at: now,
            versions: v.versions,
            expires: v.expires,
            plan,
        };
        Ok((v, checked))
    }

    /// Fetches, verifies and unpacks the release the plan chose, and
    /// switches `current` to it. Returns the version now pending its trial,
    /// or `None` when there was nothing to install. A failure before the
    /// switch is recorded as the last result and leaves `current` alone.
    pub async fn install(
        &self,
        v: &Verified,
        decision: &Decision,
        now: Timestamp,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Option<Version>, UpdateError> {
        let Decision::Install { release, downgrade } = decision else {
            return Ok(None);
        };
        let target = v.targets.get(&release.target).ok_or_else(|| UpdateError::Target {
            name: release.target.clone(),
            detail: "not in the verified targets".into(),
        })?;
        let _lock = self.releases.lock()?;
        let mut state = self.releases.read_state(&self.running)?;
        if let Some(p) = &state.pending {
            if self.releases.link("current").as_ref() == Some(&p.version) {
                return Err(UpdateError::Repository(format!(
                    "{} is on probation; nothing else is installed until it is committed or rolled back",
                    p.version
                )));
            }
            // A switch that a crash cut short (`current` never moved):
            // nothing ran, so nothing is held against that version.
            state.pending = None;
            self.releases.write_state(&state)?;
        }
        let staged = async {
            let tarball = self.downloader.fetch(target, &self.staging, progress).await?;
            let releases = self.releases.clone();
            let version = release.version.clone();
            tokio::task::spawn_blocking(move || releases.unpack(&tarball, &version))
                .await
                .expect("unpacking does not panic")
        }
        .await;
        let state = self.releases.read_state(&self.running)?;
        let switched = staged.and_then(|_| self.releases.switch(&state, &release.version, *downgrade, now));
        if let Err(e) = switched {
            let mut s = state;
            s.last = Some(Outcome {
                at: now,
                version: release.version.clone(),
                result: Result_::Failed,
                reason: e.to_string(),
            });
            // The cause is what matters; a failure to record it is logged.
            if let Err(w) = self.releases.write_state(&s) {
                log::error!("updates: recording the failed install: {w}");
            }
            return Err(e);
        }
        // Downloads of other versions, and what an abandoned one left.
        Downloader::clean_staging(&self.staging, target);
        Ok(Some(release.version.clone()))
    }
}
