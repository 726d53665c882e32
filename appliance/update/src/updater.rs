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
    pub async fn refresh(&self, expiry: Expiry) -> Result<Verified, UpdateError> {
        self.trust
            .refresh(&self.source, HttpTransport::new(self.client.clone()), expiry)
            .await
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
        if let Err(e) = staged {
            let mut s = state;
            s.last = Some(Outcome {
                at: now,
                version: release.version.clone(),
                result: Result_::Failed,
                reason: e.to_string(),
            });
            self.releases.write_state(&s)?;
            return Err(e);
        }
        self.releases.switch(&state, &release.version, *downgrade, now)?;
        Ok(Some(release.version.clone()))
    }
}
