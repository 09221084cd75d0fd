//! Domain errors of the coordinator and the ONE place where they become gRPC statuses.
//!
//! Handlers return [`ServiceError`]; `From<ServiceError> for tonic::Status` maps each
//! variant onto the small set of codes DESIGN.md promises (UNAUTHENTICATED,
//! PERMISSION_DENIED, INVALID_ARGUMENT, ALREADY_EXISTS, FAILED_PRECONDITION,
//! RESOURCE_EXHAUSTED, NOT_FOUND, INTERNAL). Internal causes are logged here and
//! reported to the caller without details of the server's internals.

use crate::auth::AuthError;
use crate::config::ConfigError;
use crate::store::StoreError;
use fedval_core::tensor::TensorError;

/// Everything a request can fail with, in the domain's own words.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this (e.g. acts as another client).
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is malformed: wrong length, NaN, bad config field, wrong round.
    #[error("{0}")]
    InvalidArgument(String),
    /// The thing already exists (duplicate upload, federation id, client name).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well-formed but the system is not in a state to take it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is larger than the server accepts.
    #[error("{0}")]
    ResourceExhausted(String),
    /// No such federation, client or model version.
    #[error("{0}")]
    NotFound(String),
    /// A storage failure: nothing was acknowledged.
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    /// A bug or an unexpected internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<AuthError> for ServiceError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::WrongIdentity { .. } => ServiceError::PermissionDenied(e.to_string()),
            _ => ServiceError::Unauthenticated(e.to_string()),
        }
    }
}

impl From<ConfigError> for ServiceError {
    fn from(e: ConfigError) -> Self {
        ServiceError::InvalidArgument(e.to_string())
    }
}

impl From<TensorError> for ServiceError {
    fn from(e: TensorError) -> Self {
        match e {
            TensorError::TooLarge { .. } | TensorError::Overflow { .. } => {
                ServiceError::ResourceExhausted(e.to_string())
            }
            _ => ServiceError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        use tonic::Status;
        match e {
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ServiceError::InvalidArgument(m) => Status::invalid_argument(m),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::Store(StoreError::Conflict { key }) => {
                Status::already_exists(format!("already exists: {key}"))
            }
            ServiceError::Store(e @ StoreError::LedgerConflict { .. }) => {
                Status::already_exists(e.to_string())
            }
            ServiceError::Store(e @ StoreError::InvalidLedgerEntry { .. }) => {
                Status::invalid_argument(e.to_string())
            }
            ServiceError::Store(other) => {
                tracing::error!(error = %other, "storage failure");
                Status::internal(
                    "storage failure on the server; nothing was acknowledged, retry later",
                )
            }
            ServiceError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal(format!("internal error: {m}"))
            }
        }
    }
}

/// Result of a service operation.
pub type ServiceResult<T> = Result<T, ServiceError>;
