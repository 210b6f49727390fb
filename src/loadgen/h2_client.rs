//! A lean gRPC client for the load generator's unary calls: each call is one HTTP/2 stream
//! on an `h2` connection — request headers, one length-prefixed message, then the answer's
//! headers, message and trailers — with nothing between the caller and the connection.
//!
//! tonic's `Channel` puts a tower buffer (a task and a queue) and hyper's client in front of
//! the same `h2` connection; on two cores shared with the server that cost the load
//! generator 23–25 µs of CPU per call at 64 clients against 13–16 µs here, CPU the server
//! under test did not get. pgbench's libpq
//! is as thin as this. The wire is the same gRPC (the server cannot tell the two apart;
//! `rapport bench ... --transport tonic` runs the same load through tonic for comparison).
//!
//! Only what the load generator needs: unary and server-streaming calls, no compression, no deadlines, answers
//! of at most [`crate::limits::MESSAGE_BYTES_MAX`].

use prost::bytes::{Buf, Bytes, BytesMut};
use tonic::codegen::http;

use crate::grpc::encoded::{PREFIX_BYTES, length_prefix, prefixed_len};

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
    pub async fn unary<Req, Resp>(
        &self,
        path: &'static str,
        request: &Req,
    ) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut answer = self.server_streaming(path, request).await?;
        let message = answer
            .message()
            .await?
            .ok_or_else(|| tonic::Status::internal("an OK answer without a message"))?;
        if answer.message().await?.is_some() {
            return Err(tonic::Status::internal(
                "a unary answer of several messages",
            ));
        }
        Resp::decode(message)
            .map_err(|e| tonic::Status::internal(format!("decoding the answer: {e}")))
    }

    /// Calls `path` with `request` and returns its answer's messages as they come, as
    /// bytes ([`H2Messages`]).
    pub async fn server_streaming<Req: prost::Message>(
        &self,
        path: &'static str,
        request: &Req,
    ) -> Result<H2Messages, tonic::Status> {
        let request_head = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| tonic::Status::internal(format!("building the request: {e}")))?;
        let mut sender = self.sender.clone().ready().await.map_err(unavailable)?;
        let (response, mut stream) = sender
            .send_request(request_head, false)
            .map_err(unavailable)?;
        stream
            .send_data(frame(request)?, true)
            .map_err(unavailable)?;
        let (parts, body) = response.await.map_err(unavailable)?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(tonic::Status::unknown(format!(
                "HTTP status {}",
                parts.status
            )));
        }
        // A trailers-only answer (an error, usually) carries grpc-status in its headers.
        let ended = match tonic::Status::from_header_map(&parts.headers) {
            Some(status) if status.code() == tonic::Code::Ok => true,
            Some(status) => return Err(status),
            None => false,
        };
        Ok(H2Messages {
            body,
            received: Reassembler::default(),
            ended,
        })
    }
}

fn unavailable(error: h2::Error) -> tonic::Status {
    tonic::Status::unavailable(error.to_string())
}

/// The messages of one answer, as their encoded bytes, in order.
pub struct H2Messages {
    body: h2::RecvStream,
    /// Received bytes not yet returned as messages.
    received: Reassembler,
    /// The answer ended OK (no more messages).
    ended: bool,
}

impl H2Messages {
    /// The next message; `None` once the answer ended with an OK `grpc-status`; the status
    /// if it ended with another one.
    pub async fn message(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        loop {
            if let Some(message) = self.received.next()? {
                return Ok(Some(message));
            }
            if self.ended {
                return if self.received.is_empty() {
                    Ok(None)
                } else {
                    Err(tonic::Status::internal("the answer ended inside a message"))
                };
            }
            match self.body.data().await {
                Some(data) => {
                    let data = data.map_err(unavailable)?;
                    let _ = self.body.flow_control().release_capacity(data.len());
                    self.received.feed(data);
                }
                None => {
                    let trailers = self.body.trailers().await.map_err(unavailable)?;
                    match trailers.as_ref().and_then(tonic::Status::from_header_map) {
                        Some(status) if status.code() == tonic::Code::Ok => self.ended = true,
                        Some(status) => return Err(status),
                        None => return Err(tonic::Status::internal("answer without grpc-status")),
                    }
                }
            }
        }
    }
}

/// Cuts the received DATA frames into length-prefixed messages. A message inside one frame
/// comes off it without a copy (a replay's messages are a few hundred bytes, its frames
/// 16 KiB); only a message that straddles frames is copied together.
#[derive(Default)]
struct Reassembler {
    /// What is left of the last frame fed.
    pending: Bytes,
    /// The start of a message that began in an earlier frame.
    partial: BytesMut,
}

impl Reassembler {
    /// Adds a received frame; call only once [`Self::next`] returned `None`.
    fn feed(&mut self, data: Bytes) {
        debug_assert!(self.pending.is_empty());
        self.pending = data;
    }

    /// Nothing received is left over.
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.partial.is_empty()
    }

    /// The next whole message, or `None` until more is fed.
    fn next(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        loop {
            if self.partial.is_empty() {
                if let Some(total) = prefixed_len(&self.pending)?
                    && self.pending.len() >= total
                {
                    let mut message = self.pending.split_to(total);
                    message.advance(PREFIX_BYTES);
                    return Ok(Some(message));
                }
                // A message that goes on in the next frame starts here (or nothing is left).
                self.partial.extend_from_slice(&self.pending);
                self.pending.clear();
                return Ok(None);
            }
            if self.pending.is_empty() {
                return Ok(None);
            }
            let total = prefixed_len(&self.partial)?.unwrap_or(PREFIX_BYTES);
            let take = (total - self.partial.len()).min(self.pending.len());
            self.partial.extend_from_slice(&self.pending.split_to(take));
            if prefixed_len(&self.partial)? == Some(self.partial.len()) {
                let mut message = std::mem::take(&mut self.partial).freeze();
                message.advance(PREFIX_BYTES);
                return Ok(Some(message));
            }
        }
    }
}

/// `message` as one gRPC length-prefixed message: flag 0 (not compressed), length, bytes;
/// `OUT_OF_RANGE` past what a prefix can say.
fn frame<M: prost::Message>(message: &M) -> Result<Bytes, tonic::Status> {
    let len = message.encoded_len();
    let prefix = length_prefix(len)
        .ok_or_else(|| tonic::Status::out_of_range(format!("a request of {len} bytes")))?;
    let mut out = BytesMut::with_capacity(PREFIX_BYTES + len);
    out.extend_from_slice(&prefix);
    message
        .encode(&mut out)
        .expect("the buffer has the message's length reserved");
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` cut at `cuts` and returns every message that comes out.
    fn reassemble(stream: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut received = Reassembler::default();
        let mut out = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([stream.len()]) {
            received.feed(Bytes::copy_from_slice(&stream[start..end]));
            while let Some(message) = received.next().unwrap() {
                out.push(message);
            }
            start = end;
        }
        assert!(received.is_empty());
        out
    }

    #[test]
    fn messages_come_out_whole_and_in_order_however_the_frames_cut_them() {
        let messages: Vec<Vec<u8>> = vec![vec![7; 10], vec![], vec![1, 2, 3], vec![9; 40]];
        let mut stream = Vec::new();
        for message in &messages {
            stream
                .extend_from_slice(&frame(&Bytes::from(message.clone())).expect("a small message"));
        }
        // Whole, cut inside a header, cut inside a body, cut at every byte.
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        for cuts in [&[][..], &[3], &[20], &[15, 16, 17], &every_byte[..]] {
            let out = reassemble(&stream, cuts);
            // `frame` of a `Bytes` message adds its own field tag and length.
            let decoded: Vec<Vec<u8>> = out
                .into_iter()
                .map(|m| <Bytes as prost::Message>::decode(m).unwrap().to_vec())
                .collect();
            assert_eq!(decoded, messages, "cuts {cuts:?}");
        }
    }

    #[test]
    fn compressed_or_oversize_messages_are_errors() {
        assert!(prefixed_len(&[1u8, 0, 0, 0, 1, 7]).is_err());
        assert_eq!(
            prefixed_len(&[0u8, 0xff, 0xff, 0xff, 0xff])
                .unwrap_err()
                .code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(prefixed_len(&[0u8, 0, 0, 0]).unwrap(), None);
        assert_eq!(prefixed_len(&[0u8, 0, 0, 0, 3]).unwrap(), Some(8));
    }

    #[test]
    fn only_plain_http_urls_connect() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for url in [
            "https://127.0.0.1:1",
            "127.0.0.1:1",
            "http://",
            "http://a:1/x",
        ] {
            assert!(matches!(
                runtime.block_on(H2Connection::connect(url)),
                Err(H2ConnectError::Url(_))
            ));
        }
    }
}
