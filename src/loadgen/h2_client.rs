//! A lean gRPC client for the load generator's unary calls: each call is one HTTP/2 stream
//! on an `h2` connection — request headers, one length-prefixed message, then the answer's
//! headers, message and trailers — with nothing between the caller and the connection.
//!
//! tonic's `Channel` puts a tower buffer (a task and a queue) and hyper's client in front of
//! the same `h2` connection; on two cores shared with the server that cost the load
//! generator ~26 µs of CPU per call, CPU the server under test did not get. pgbench's libpq
//! is as thin as this. The wire is the same gRPC (the server cannot tell the two apart;
//! `rapport bench ... --transport tonic` runs the same load through tonic for comparison).
//!
//! Only what the load generator needs: unary calls, no compression, no deadlines, answers
//! of at most [`crate::limits::MESSAGE_BYTES_MAX`].

use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::codegen::http;

/// One HTTP/2 connection to a gRPC server, shared by the clients given clones of it.
#[derive(Clone)]
pub struct H2Connection {
    sender: h2::client::SendRequest<Bytes>,
    /// `scheme://authority` of the server, the prefix of every request's URI.
    base: std::sync::Arc<str>,
}

/// Why an `h2` connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum H2ConnectError {
    /// The server URL is not `http://host:port`.
    #[error("server URL {0:?} is not http://host:port")]
    Url(String),
    /// TCP connect failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake: {0}")]
    H2(#[from] h2::Error),
}

impl H2Connection {
    /// Connects to `server` (`http://host:port`) with the same HTTP/2 windows as the
    /// tonic channels ([`super::connect`]). The connection is driven by a task spawned on
    /// the current runtime.
    pub async fn connect(server: &str) -> Result<Self, H2ConnectError> {
        let authority = server
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| H2ConnectError::Url(server.to_owned()))?;
        let tcp = tokio::net::TcpStream::connect(authority).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(crate::grpc::server::HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(crate::grpc::server::HTTP2_CONNECTION_WINDOW_BYTES)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            // Ends when every sender is dropped or the server goes away; calls in flight
            // then fail with the connection's error.
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            base: format!("http://{authority}").into(),
        })
    }

    /// Calls `path` with `request` and decodes the answer as `Resp`. A non-OK `grpc-status`
    /// comes back as that status; a broken connection or malformed answer as `UNAVAILABLE`
    /// or `INTERNAL`.
    pub async fn unary<Req, Resp>(&self, path: &str, request: &Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let message = self.call(path, frame(request)).await?;
        Resp::decode(message)
            .map_err(|e| tonic::Status::internal(format!("decoding the answer: {e}")))
    }

    /// One call: sends the framed request, returns the answer's message bytes.
    async fn call(&self, path: &str, body: Bytes) -> Result<Bytes, tonic::Status> {
        let unavailable = |e: h2::Error| tonic::Status::unavailable(e.to_string());
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| tonic::Status::internal(format!("building the request: {e}")))?;
        let mut sender = self.sender.clone().ready().await.map_err(unavailable)?;
        let (response, mut stream) = sender.send_request(request, false).map_err(unavailable)?;
        stream.send_data(body, true).map_err(unavailable)?;
        let (parts, mut body) = response.await.map_err(unavailable)?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(tonic::Status::unknown(format!(
                "HTTP status {}",
                parts.status
            )));
        }
        // A trailers-only answer (an error, usually) carries grpc-status in its headers.
        if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
            return Err(if status.code() == tonic::Code::Ok {
                tonic::Status::internal("an OK answer without a message")
            } else {
                status
            });
        }
        let mut received = BytesMut::new();
        while let Some(data) = body.data().await {
            let data = data.map_err(unavailable)?;
            let _ = body.flow_control().release_capacity(data.len());
            if received.len() + data.len() > crate::limits::MESSAGE_BYTES_MAX + 5 {
                return Err(tonic::Status::resource_exhausted(
                    "answer larger than the message limit",
                ));
            }
            received.extend_from_slice(&data);
        }
        let trailers = body.trailers().await.map_err(unavailable)?;
        match trailers.as_ref().and_then(tonic::Status::from_header_map) {
            Some(status) if status.code() == tonic::Code::Ok => unframe(received.freeze()),
            Some(status) => Err(status),
            None => Err(tonic::Status::internal("answer without grpc-status")),
        }
    }
}

/// `message` as one gRPC length-prefixed message: flag 0 (not compressed), length, bytes.
fn frame<M: prost::Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    message
        .encode(&mut out)
        .expect("the buffer has the message's length reserved");
    out.freeze()
}

/// The one message of an answer's body (a unary answer has exactly one).
fn unframe(mut body: Bytes) -> Result<Bytes, tonic::Status> {
    if body.len() < 5 {
        return Err(tonic::Status::internal("answer without a message"));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(tonic::Status::internal("a compressed answer (none was asked)"));
    }
    if body.len() != len {
        return Err(tonic::Status::internal(format!(
            "answer body of {} bytes for a message of {len}",
            body.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_message_unframes_to_its_bytes() {
        let message = crate::grpc::pb::GetHeadResponse {
            position: 42,
            ..Default::default()
        };
        let framed = frame(&message);
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize,
            framed.len() - 5
        );
        let bytes = unframe(framed).unwrap();
        assert_eq!(
            <crate::grpc::pb::GetHeadResponse as prost::Message>::decode(bytes).unwrap(),
            message
        );
    }

    #[test]
    fn short_compressed_or_mis_sized_bodies_are_errors() {
        assert!(unframe(Bytes::from_static(&[0, 0, 0])).is_err());
        assert!(unframe(Bytes::from_static(&[1, 0, 0, 0, 1, 7])).is_err());
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 2, 7])).is_err());
        assert_eq!(
            unframe(Bytes::from_static(&[0, 0, 0, 0, 1, 7])).unwrap(),
            Bytes::from_static(&[7])
        );
    }

    #[test]
    fn only_plain_http_urls_connect() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for url in ["https://127.0.0.1:1", "127.0.0.1:1", "http://", "http://a:1/x"] {
            assert!(matches!(
                runtime.block_on(H2Connection::connect(url)),
                Err(H2ConnectError::Url(_))
            ));
        }
    }
}
