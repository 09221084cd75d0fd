//! The SDK's error type: every gRPC status the coordinator sends comes back as a typed
//! [`ClientError`] variant that keeps the server's message, next to the failures that happen
//! on this side of the wire (connecting, a malformed server stream, local training).
//!
//! The coordinator maps its domain errors onto a small set of gRPC codes (DESIGN.md, "API");
//! this module is the inverse mapping, so callers match on variants instead of codes. Only
//! [`ClientError::is_retryable`] errors are worth repeating unchanged.

use std::error::Error as _;

use tonic::{Code, Status};

/// Everything that can go wrong talking to a coordinator or running a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The bearer token (or enrollment secret) was missing, wrong or revoked.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token is valid but may not act on this federation or client.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server rejected the request's content (wrong length, NaN/inf, wrong round, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The thing already exists, e.g. an update for this round was uploaded before.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The federation is not in a state that allows the call, e.g. the round is closed.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A size or rate limit was hit, e.g. an update larger than the model.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The federation, client or model version does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The server is unreachable or shutting down; worth retrying.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The call timed out or was cancelled mid-way; worth retrying.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// Any other status code, with the server's message.
    #[error("server error ({code:?}): {message}")]
    Other {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The channel to the coordinator could not be established.
    #[error("cannot connect to {url}")]
    Transport {
        /// The URL we tried.
        url: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server sent something malformed: a missing field, a bad chunk, a checksum mismatch.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local input the SDK refuses before sending anything: a URL that does not parse, a
    /// token that cannot be a header, data that does not fit the model, an update of the wrong
    /// length or with NaN/inf values.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The local [`Trainer`](crate::Trainer) failed (or panicked).
    #[error("local trainer failed")]
    Trainer(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ClientError {
    /// True for failures that may go away if the same call is repeated later: the server was
    /// unavailable, the call timed out, or the connection could not be made.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_)
                | Self::DeadlineExceeded(_)
                | Self::Transport { .. }
                // The server reports storage failures as INTERNAL: nothing was
                // acknowledged, and the call may succeed once it recovers.
                | Self::Other { code: Code::Internal, .. }
        )
    }

    /// The gRPC code of a server-side rejection, `None` for local and transport failures.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::NotFound(_) => Code::NotFound,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Other { code, .. } => *code,
            Self::Transport { .. }
            | Self::Protocol(_)
            | Self::InvalidInput(_)
            | Self::Trainer(_) => return None,
        })
    }
}

impl From<Status> for ClientError {
    /// Maps a status onto its variant, keeping the server's message. `Cancelled` counts as a
    /// timeout (the call was cut off, typically by a dropped connection), as in quickwit's
    /// client mapping.
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::InvalidArgument => Self::InvalidArgument(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::ResourceExhausted => Self::ResourceExhausted(message),
            Code::NotFound => Self::NotFound(message),
            Code::Unavailable => Self::Unavailable(message),
            Code::DeadlineExceeded | Code::Cancelled => Self::DeadlineExceeded(message),
            // A status the server never sent: tonic wraps a broken connection (a server
            // that crashed mid-call) as `Unknown` with the transport error as its source.
            Code::Unknown if status.source().is_some() => {
                Self::Unavailable(format!("connection lost: {message}"))
            }
            code => Self::Other { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_maps_to_its_variant_and_back() {
        let codes = [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::NotFound,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
        ];
        for code in codes {
            let err = ClientError::from(Status::new(code, "round 3 is closed"));
            assert_eq!(err.code(), Some(code), "{err}");
            assert!(err.to_string().ends_with("round 3 is closed"), "{err}");
        }
    }

    #[test]
    fn variants_keep_the_server_message() {
        let err = ClientError::from(Status::already_exists(
            "update for round 2 already received",
        ));
        match err {
            ClientError::AlreadyExists(m) => assert_eq!(m, "update for round 2 already received"),
            other => panic!("unexpected {other:?}"),
        }
        let err = ClientError::from(Status::internal("disk full"));
        assert_eq!(err.to_string(), "server error (Internal): disk full");
    }

    #[test]
    fn cancelled_is_a_retryable_timeout() {
        let err = ClientError::from(Status::cancelled("stream reset"));
        assert!(matches!(err, ClientError::DeadlineExceeded(ref m) if m == "stream reset"));
        assert!(err.is_retryable());
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        let retryable = [Code::Unavailable, Code::DeadlineExceeded, Code::Internal];
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::NotFound,
            Code::Internal,
            Code::Unavailable,
            Code::DeadlineExceeded,
        ] {
            let err = ClientError::from(Status::new(code, "x"));
            assert_eq!(err.is_retryable(), retryable.contains(&code), "{code:?}");
        }
        assert!(!ClientError::Protocol("bad chunk".into()).is_retryable());
        assert!(!ClientError::InvalidInput("bad token".into()).is_retryable());
        assert!(!ClientError::Trainer("boom".into()).is_retryable());
    }
}
