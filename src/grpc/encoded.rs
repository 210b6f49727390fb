//! The `EventStore` service as the server mounts it: the generated service, except that
//! `ReadStream`, `ReadAll` and `Subscribe` answer with protobuf bytes the server wrote
//! straight from the stored events ([`super::wire`]), not with prost messages it built
//! and then encoded (most of a replay's server time went there), and `Append` decodes
//! its events' bodies late ([`super::append_wire`]: custom data goes from the request's
//! bytes straight to its stored bytes).
//!
//! [`EventStoreEdge`] answers those four paths itself and routes every other one to the
//! generated `EventStoreServer`. Their requests are decoded by `request_message`, with
//! tonic's rules (no compression, the message size limit as `RESOURCE_EXHAUSTED`, exactly
//! one message). `Append`, `ReadStream` and `ReadAll` answer through `unary_response`:
//! the message behind its length prefix (a read page's bytes are not copied) and
//! `grpc-status: 0` in the trailers, or a trailers-only error, as tonic's `Grpc::unary`
//! writes them. `Subscribe` answers with a body of its own
//! ([`super::event_store::SubscriptionBody`]): each step's messages, already behind
//! their gRPC length prefixes, go out as one data frame, and the status in the trailers.
//! Without tonic's poll and copy of every message into its buffer, a warm replay took
//! 0.88× the server CPU (BENCHMARKS.md). The wire contract does not change: the bytes
//! decode to the messages the generated service would send (tests in [`super::wire`]
//! and the integration tests, which use the generated client).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::NamedService;

use super::event_store::EventStoreService;
use super::pb;
use super::pb::event_store_server::EventStoreServer;
use crate::limits;

/// One protobuf message, already encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded(pub Bytes);

impl Encoded {
    /// Decodes the message as `M` (for callers that want the message itself).
    pub fn decode<M: prost::Message + Default>(self) -> Result<M, Status> {
        M::decode(self.0).map_err(|e| Status::internal(format!("re-decoding a response: {e}")))
    }
}

/// A gRPC length prefix's size: the compression flag and a big-endian `u32` length.
pub const PREFIX_BYTES: usize = 5;

/// The gRPC length prefix of an uncompressed message of `len` bytes: flag 0, then the
/// length as a big-endian `u32`; `None` past `u32::MAX`. The server's unary answers and
/// subscription batches and the load generator's requests all write prefixes with it.
pub fn length_prefix(len: usize) -> Option<[u8; PREFIX_BYTES]> {
    let [a, b, c, d] = u32::try_from(len).ok()?.to_be_bytes();
    Some([0, a, b, c, d])
}

/// The trailers that end a response with `status`: `grpc-status`, and `grpc-message` and
/// details when it has them. A message that cannot be a header sends its code alone.
pub fn status_trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::with_capacity(1);
    if let Err(unencodable) = status.add_header(&mut trailers) {
        let _ = Status::new(unencodable.code(), "").add_header(&mut trailers);
    }
    trailers
}

/// A message over [`limits::MESSAGE_BYTES_MAX`], in tonic's words (so every service says
/// it alike).
fn too_large(len: usize) -> Status {
    Status::resource_exhausted(format!(
        "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
        limits::MESSAGE_BYTES_MAX
    ))
}

/// The length, prefix included, of the length-prefixed gRPC message `bytes` starts with,
/// once its prefix is there (`None` before). A compressed message is `UNIMPLEMENTED` (no
/// compression is offered either way), one over [`limits::MESSAGE_BYTES_MAX`]
/// `RESOURCE_EXHAUSTED`. The server's own request decoding and the load generator's
/// client both read prefixes with it.
pub fn prefixed_len(bytes: &[u8]) -> Result<Option<usize>, Status> {
    let Some(prefix) = bytes.get(..PREFIX_BYTES) else {
        return Ok(None);
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > limits::MESSAGE_BYTES_MAX {
        return Err(too_large(len));
    }
    Ok(Some(PREFIX_BYTES + len))
}

/// The memory the edge may hold for calls in flight, in bytes, as semaphore permits
/// ([`limits::REQUEST_BYTES_IN_FLIGHT_MAX`], [`limits::RESPONSE_BYTES_IN_FLIGHT_MAX`]). A
/// call takes what it holds without waiting, or is refused with `RESOURCE_EXHAUSTED`.
#[derive(Clone)]
pub struct Budget {
    requests: Arc<Semaphore>,
    responses: Arc<Semaphore>,
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(
            limits::REQUEST_BYTES_IN_FLIGHT_MAX,
            limits::RESPONSE_BYTES_IN_FLIGHT_MAX,
        )
    }
}

impl Budget {
    /// A budget of `request_bytes` for request bodies and `response_bytes` for answers.
    pub fn new(request_bytes: usize, response_bytes: usize) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(request_bytes)),
            responses: Arc::new(Semaphore::new(response_bytes)),
        }
    }

    /// Adds `bytes` of a request body to `held`, or refuses the call.
    fn take_request(&self, held: &mut OwnedSemaphorePermit, bytes: usize) -> Result<(), Status> {
        let more = take(
            &self.requests,
            bytes,
            limits::REQUEST_BYTES_IN_FLIGHT_MAX,
            "requests",
        )?;
        held.merge(more);
        Ok(())
    }

    /// Holds `bytes` of an answer until it is sent, or refuses it.
    fn take_response(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Status> {
        take(
            &self.responses,
            bytes,
            limits::RESPONSE_BYTES_IN_FLIGHT_MAX,
            "read answers",
        )
    }

    /// An empty hold, to add a request's bytes to as they arrive.
    fn nothing(&self) -> OwnedSemaphorePermit {
        self.requests
            .clone()
            .try_acquire_many_owned(0)
            .expect("zero permits are always there")
    }
}

/// `bytes` permits of `budget` (whose limit is `limit` bytes of `what`), at once or
/// `RESOURCE_EXHAUSTED`.
fn take(
    budget: &Arc<Semaphore>,
    bytes: usize,
    limit: usize,
    what: &str,
) -> Result<OwnedSemaphorePermit, Status> {
    u32::try_from(bytes)
        .ok()
        .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
        .ok_or_else(|| {
            Status::resource_exhausted(format!(
                "the server holds its limit of {} MiB of {what} in flight; retry later",
                limit >> 20
            ))
        })
}

/// The one message of a request body, decoded as `M`, as tonic's server decodes it: no
/// compression, at most [`limits::MESSAGE_BYTES_MAX`] (`RESOURCE_EXHAUSTED` past it, as
/// every service answers), exactly one message. For the paths that answer with a body of
/// their own instead of through [`Grpc`]. The body's bytes are taken from `budget` as they
/// arrive, into `held` (the caller keeps them until it has answered).
async fn request_message<M, B>(
    request: http::Request<B>,
    budget: &Budget,
    held: &mut OwnedSemaphorePermit,
) -> Result<M, Status>
where
    M: prost::Message + Default,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    use prost::bytes::Buf;
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(Status::unimplemented(format!(
            "message compression {encoding:?} is not supported"
        )));
    }
    let mut body = std::pin::pin!(request.into_body());
    let mut received = prost::bytes::BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame =
            frame.map_err(|e| Status::internal(format!("reading the request: {}", e.into())))?;
        if let Ok(mut data) = frame.into_data() {
            if received.len() + data.remaining() > limits::MESSAGE_BYTES_MAX + PREFIX_BYTES {
                return Err(too_large(received.len() + data.remaining() - PREFIX_BYTES));
            }
            budget.take_request(held, data.remaining())?;
            while data.has_remaining() {
                let chunk = data.chunk();
                let n = chunk.len();
                received.extend_from_slice(chunk);
                data.advance(n);
            }
        }
    }
    match prefixed_len(&received)? {
        None => return Err(Status::internal("Missing request message.")),
        Some(total) if total != received.len() => {
            return Err(Status::internal(format!(
                "a request body of {} bytes for one message of {}",
                received.len(),
                total - PREFIX_BYTES
            )));
        }
        Some(_) => {}
    }
    M::decode(&received[PREFIX_BYTES..]).map_err(|e| super::status::undecodable_request(&e))
}

/// The request's one message ([`request_message`], its bytes held in `held` until the
/// caller has answered), then `handle`'s answer to it.
async fn handled<M, B, T, F, Fut>(
    request: http::Request<B>,
    budget: &Budget,
    held: &mut OwnedSemaphorePermit,
    handle: F,
) -> Result<T, Status>
where
    M: prost::Message + Default,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    F: FnOnce(M) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let message = request_message::<M, B>(request, budget, held).await?;
    handle(message).await
}

/// A message at most this long goes out in one data frame with its prefix (one copy);
/// a longer one (a read page) as the prefix's frame and then its own bytes, uncopied.
const UNARY_COPY_BYTES_MAX: usize = 16 * 1024;

/// A unary call's answer as tonic's server would write it: for an encoded message, the
/// `application/grpc` headers, the message behind its length prefix and `grpc-status: 0`
/// in the trailers; for an error, a trailers-only response. A message over
/// [`limits::MESSAGE_BYTES_MAX`] is refused as tonic refuses it (`OUT_OF_RANGE`).
fn unary_response(
    answer: Result<Bytes, Status>,
    hold: Option<OwnedSemaphorePermit>,
) -> http::Response<tonic::body::Body> {
    let (message, prefix) = match answer {
        Ok(message) => match length_prefix(message.len()) {
            Some(prefix) if message.len() <= limits::MESSAGE_BYTES_MAX => (message, prefix),
            _ => {
                return Status::out_of_range(format!(
                    "Error, encoded message length too large: found {} bytes, the limit is: {} bytes",
                    message.len(),
                    limits::MESSAGE_BYTES_MAX
                ))
                .into_http();
            }
        },
        Err(status) => return status.into_http(),
    };
    let frames = if message.len() <= UNARY_COPY_BYTES_MAX {
        let mut framed = prost::bytes::BytesMut::with_capacity(PREFIX_BYTES + message.len());
        framed.extend_from_slice(&prefix);
        framed.extend_from_slice(&message);
        vec![framed.freeze()]
    } else {
        // Last first: the body pops them.
        vec![message, Bytes::copy_from_slice(&prefix)]
    };
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::new(UnaryBody {
            frames,
            done: false,
            _hold: hold,
        }))
        .unwrap_or_else(|_| Status::internal("building the response").into_http())
}

/// A read's answer, its bytes held in `budget` until it is sent (or refused when the
/// budget is spent).
fn held_answer(
    answer: Result<Bytes, Status>,
    budget: &Budget,
) -> http::Response<tonic::body::Body> {
    match answer.and_then(|page| Ok((budget.take_response(page.len())?, page))) {
        Ok((hold, page)) => unary_response(Ok(page), Some(hold)),
        Err(status) => unary_response(Err(status), None),
    }
}

/// The body of [`unary_response`]: its data frames, then `grpc-status: 0`.
struct UnaryBody {
    /// The data frames still to send, last first.
    frames: Vec<Bytes>,
    /// The trailers are out.
    done: bool,
    /// The answer's bytes in the edge's [`Budget`], given back when the body is dropped
    /// (sent, or its stream reset).
    _hold: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.frames.pop() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        self.done = true;
        let trailers = status_trailers(&Status::ok(""));
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The mounted `rapport.v1.EventStore` service (see the module doc).
#[derive(Clone)]
pub struct EventStoreEdge {
    service: EventStoreService,
    generated: EventStoreServer<EventStoreService>,
    budget: Budget,
}

impl EventStoreEdge {
    /// Serves `service`, with the message size limits of every service and the default
    /// [`Budget`].
    pub fn new(service: EventStoreService) -> Self {
        let generated = EventStoreServer::new(service.clone())
            .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::MESSAGE_BYTES_MAX);
        Self {
            service,
            generated,
            budget: Budget::default(),
        }
    }
}

impl NamedService for EventStoreEdge {
    const NAME: &'static str = <EventStoreServer<EventStoreService> as NamedService>::NAME;
}

impl<B> tonic::codegen::Service<http::Request<B>> for EventStoreEdge
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tonic::codegen::Service::<http::Request<B>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // tonic's unary / server-streaming adaptors take any tower service of the right
        // shape: a closure over the service each.
        let service = self.service.clone();
        let budget = self.budget.clone();
        // The request's bytes, held until the call is answered.
        let mut held = budget.nothing();
        match request.uri().path() {
            "/rapport.v1.EventStore/Append" => Box::pin(async move {
                let answer = handled(request, &budget, &mut held, |append| async move {
                    let response = service.append_wire(tonic::Request::new(append)).await?;
                    Ok(Bytes::from(prost::Message::encode_to_vec(
                        response.get_ref(),
                    )))
                })
                .await;
                Ok(unary_response(answer, None))
            }),
            "/rapport.v1.EventStore/ReadStream" => Box::pin(async move {
                let answer = handled(request, &budget, &mut held, |read| async move {
                    let page = service
                        .read_stream_encoded(tonic::Request::new(read))
                        .await?;
                    Ok(page.into_inner().0)
                })
                .await;
                Ok(held_answer(answer, &budget))
            }),
            "/rapport.v1.EventStore/ReadAll" => Box::pin(async move {
                let answer = handled(request, &budget, &mut held, |read| async move {
                    let page = service.read_all_encoded(tonic::Request::new(read)).await?;
                    Ok(page.into_inner().0)
                })
                .await;
                Ok(held_answer(answer, &budget))
            }),
            "/rapport.v1.EventStore/Subscribe" => Box::pin(async move {
                let answer =
                    request_message::<pb::SubscribeRequest, B>(request, &budget, &mut held)
                        .await
                        .and_then(|subscribe| service.subscribe_body(subscribe));
                Ok(match answer {
                    Ok(body) => http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/grpc")
                        .body(tonic::body::Body::new(body))
                        .unwrap_or_else(|_| Status::internal("building the response").into_http()),
                    Err(status) => status.into_http(),
                })
            }),
            _ => self.generated.call(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request whose body is `body` (ASCII bytes here, so a `String` body carries them).
    fn request(body: &[u8], encoding: Option<&str>) -> http::Request<String> {
        let mut builder = http::Request::builder().uri("/rapport.v1.EventStore/Subscribe");
        if let Some(encoding) = encoding {
            builder = builder.header("grpc-encoding", encoding);
        }
        builder
            .body(String::from_utf8(body.to_vec()).expect("ASCII"))
            .expect("request")
    }

    fn decode_within(
        body: &[u8],
        encoding: Option<&str>,
        budget: &Budget,
    ) -> Result<pb::SubscribeRequest, Status> {
        let mut held = budget.nothing();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(request_message::<pb::SubscribeRequest, _>(
                request(body, encoding),
                budget,
                &mut held,
            ))
    }

    fn decode(body: &[u8], encoding: Option<&str>) -> Result<pb::SubscribeRequest, Status> {
        decode_within(body, encoding, &Budget::default())
    }

    #[test]
    fn requests_and_answers_past_the_budget_are_refused_and_hold_nothing() {
        let one = [0, 0, 0, 0, 2, 0x08, 0x05];
        let budget = Budget::new(one.len(), 100);
        // One request fits; while it is held, a second does not.
        let mut held = budget.nothing();
        budget.take_request(&mut held, one.len()).unwrap();
        let refused = decode_within(&one, None, &budget).unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        drop(held);
        assert_eq!(
            decode_within(&one, None, &budget).unwrap().after_position,
            5
        );
        // Nothing is kept past a decode (the caller's hold is dropped): the whole budget
        // is there again, and a request larger than it is refused.
        assert_eq!(budget.requests.available_permits(), one.len());
        let long = [0, 0, 0, 0, 4, 0x08, 0x05, 0x08, 0x06];
        assert_eq!(
            decode_within(&long, None, &budget).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(budget.requests.available_permits(), one.len());
        // An answer is held until its body is dropped.
        let page = Bytes::from(vec![7u8; 60]);
        let response = held_answer(Ok(page.clone()), &budget);
        assert_eq!(budget.responses.available_permits(), 40);
        let refused = held_answer(Ok(page), &budget);
        assert_eq!(
            refused.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"8"[..])
        );
        drop(response);
        assert_eq!(budget.responses.available_permits(), 100);
    }

    #[test]
    fn a_request_body_decodes_as_tonic_would_and_nothing_else_does() {
        // after_position = 5: field 1, varint 5.
        let one = [0, 0, 0, 0, 2, 0x08, 0x05];
        assert_eq!(decode(&one, None).unwrap().after_position, 5);
        assert_eq!(decode(&one, Some("identity")).unwrap().after_position, 5);
        let code = |body: &[u8], encoding| decode(body, encoding).unwrap_err().code();
        assert_eq!(code(&one, Some("gzip")), tonic::Code::Unimplemented);
        assert_eq!(
            code(&[1, 0, 0, 0, 2, 8, 5], None),
            tonic::Code::Unimplemented
        );
        assert_eq!(code(b"", None), tonic::Code::Internal);
        assert_eq!(code(&[0, 0, 0], None), tonic::Code::Internal);
        // A declared length over the limit, before any of it arrives.
        assert_eq!(
            code(&[0, 0x7f, 0x7f, 0x7f, 0x7f], None),
            tonic::Code::ResourceExhausted
        );
        // Two messages, or one cut short.
        let two = [0, 0, 0, 0, 2, 8, 5, 0, 0, 0, 0, 2, 8, 6];
        assert_eq!(code(&two, None), tonic::Code::Internal);
        assert_eq!(code(&one[..6], None), tonic::Code::Internal);
        // Bytes that are not a SubscribeRequest: the client's fault.
        assert_eq!(
            code(&[0, 0, 0, 0, 1, 0x08], None),
            tonic::Code::InvalidArgument
        );
    }

    /// Every frame of a response body: data frames concatenated, then the trailers.
    fn frames(response: http::Response<tonic::body::Body>) -> (Vec<Bytes>, http::HeaderMap) {
        use http_body::Body as _;
        let mut body = std::pin::pin!(response.into_body());
        let mut data = Vec::new();
        let mut trailers = http::HeaderMap::new();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(async {
                while let Some(frame) =
                    std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                {
                    let frame = frame.expect("frame");
                    match frame.into_data() {
                        Ok(bytes) => data.push(bytes),
                        Err(frame) => trailers = frame.into_trailers().expect("trailers"),
                    }
                }
            });
        (data, trailers)
    }

    #[test]
    fn a_unary_answer_is_framed_as_tonic_frames_it() {
        // A small message: one frame, prefix and message, then grpc-status 0.
        let response = unary_response(Ok(Bytes::from_static(&[0x08, 0x05])), None);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let (data, trailers) = frames(response);
        assert_eq!(data, vec![Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x05])]);
        assert_eq!(trailers["grpc-status"], "0");
        // A page: the prefix, then the page's own bytes, not copied.
        let page = Bytes::from(vec![7u8; UNARY_COPY_BYTES_MAX + 1]);
        let (data, trailers) = frames(unary_response(Ok(page.clone()), None));
        let len = u32::try_from(page.len()).unwrap().to_be_bytes();
        assert_eq!(data[0].as_ref(), [0, len[0], len[1], len[2], len[3]]);
        assert_eq!(data[1].as_ptr(), page.as_ptr());
        assert_eq!(data.len(), 2);
        assert_eq!(trailers["grpc-status"], "0");
        // An error: trailers-only, as tonic answers one.
        let response = unary_response(Err(Status::not_found("no stream")), None);
        assert_eq!(response.headers()["grpc-status"], "5");
        assert_eq!(response.headers()["grpc-message"], "no%20stream");
        // A message over the limit is refused, not sent.
        let over = Bytes::from(vec![0u8; limits::MESSAGE_BYTES_MAX + 1]);
        let response = unary_response(Ok(over), None);
        assert_eq!(response.headers()["grpc-status"], "11");
    }

    #[test]
    fn a_length_prefix_says_uncompressed_and_the_length_big_endian() {
        assert_eq!(length_prefix(0), Some([0, 0, 0, 0, 0]));
        assert_eq!(length_prefix(0x0102_0304), Some([0, 1, 2, 3, 4]));
        let prefix = length_prefix(300).unwrap();
        assert_eq!(prefixed_len(&prefix).unwrap(), Some(PREFIX_BYTES + 300));
        assert_eq!(length_prefix(u32::MAX as usize + 1), None);
    }
}
