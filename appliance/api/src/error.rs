//! Why an action on the node was not done: the one error type of the
//! contract between the admin page, the control socket and the supervisor.
//! Its kind decides the HTTP status, in one exhaustive match
//! ([`ActionError::http_status`]) that both servers use, so a new kind
//! forces a decision and no status is ever picked by reading a message.
//! The text is a sentence for people, and never carries a secret.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ActionError {
    /// What the request names does not exist here (a service, a recipe).
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong as given (a bad token, an expired certificate).
    #[error("{0}")]
    Invalid(String),
    /// It clashes with what is going on (a restart already running, an
    /// enrollment already done).
    #[error("{0}")]
    Conflict(String),
    /// What would do it is not running or cannot be reached (the service
    /// runtime, systemd, the journal, global ops).
    #[error("{0}")]
    Unavailable(String),
    /// It was tried and did not work.
    #[error("{0}")]
    Failed(String),
}

impl ActionError {
    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ActionError::NotFound(_) => 404,
            ActionError::Invalid(_) => 400,
            ActionError::Conflict(_) => 409,
            ActionError::Unavailable(_) => 503,
            ActionError::Failed(_) => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses_and_serialise_with_their_kind() {
        let cases = [
            (ActionError::NotFound("no service named \"x\"".into()), 404, "not_found"),
            (ActionError::Invalid("not an enrollment token".into()), 400, "invalid"),
            (ActionError::Conflict("already being restarted".into()), 409, "conflict"),
            (
                ActionError::Unavailable("the service runtime is not running".into()),
                503,
                "unavailable",
            ),
            (ActionError::Failed("restart failed".into()), 500, "failed"),
        ];
        for (e, status, kind) in cases {
            assert_eq!(e.http_status(), status, "{e}");
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["kind"], kind);
            assert_eq!(serde_json::from_value::<ActionError>(v).unwrap(), e);
        }
    }
}
