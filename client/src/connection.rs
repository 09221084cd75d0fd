//! Opening a gRPC channel to a coordinator with the transport settings fedval measured.
//!
//! Large tensors travel in ~1 MiB chunks, so the HTTP/2 frame size and flow-control windows
//! matter more than anything else on the wire (DESIGN.md, "Transport settings"): frames of
//! 1 MiB instead of the 16 KiB default, adaptive windows, and `TCP_NODELAY` kept on. One
//! channel multiplexes every call of a node and reconnects by itself after a drop; a call
//! made while it is down fails with a retryable [`ClientError::Unavailable`].

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// HTTP/2 frame size asked for on the channel: 1 MiB, one tensor chunk per frame.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// How long establishing the TCP (and HTTP/2) connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the coordinator at `url` (e.g. `http://127.0.0.1:50051`).
///
/// Fails with [`ClientError::InvalidInput`] if `url` is not a valid URI and with the
/// retryable [`ClientError::Transport`] if nothing answers there.
pub async fn connect(url: &str) -> Result<Channel, ClientError> {
    endpoint(url)?
        .connect()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })
}

/// The endpoint for `url` with fedval's transport settings, not yet connected.
pub fn endpoint(url: &str) -> Result<Endpoint, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::InvalidInput(format!("bad server url {url:?}: {e}")))?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .max_frame_size(MAX_FRAME_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_url_is_invalid_input() {
        let err = endpoint("not a url").unwrap_err();
        assert!(matches!(err, ClientError::InvalidInput(_)), "{err:?}");
        assert!(err.to_string().contains("\"not a url\""), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn endpoint_keeps_nodelay_and_timeout() {
        let ep = endpoint("http://127.0.0.1:50051").unwrap();
        assert!(ep.get_tcp_nodelay());
        assert_eq!(ep.get_connect_timeout(), Some(CONNECT_TIMEOUT));
    }

    #[tokio::test]
    async fn refused_connection_is_a_retryable_transport_error() {
        // Bind a port, then free it, so nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}");
        let err = connect(&url).await.unwrap_err();
        match &err {
            ClientError::Transport { url: u, .. } => assert_eq!(u, &url),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), format!("cannot connect to {url}"));
    }
}
