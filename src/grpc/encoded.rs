//! The `EventStore` service as the server mounts it: the generated service, except that
//! `ReadStream`, `ReadAll` and `Subscribe` answer with protobuf bytes the server wrote
//! straight from the stored events ([`super::wire`]), not with prost messages it built
//! and then encoded (most of a replay's server time went there), and `Append` decodes
//! its events' bodies late ([`super::append_wire`]: custom data goes from the request's
//! bytes straight to its stored bytes).
//!
//! [`EventStoreEdge`] routes `ReadStream` and `ReadAll` to [`tonic::server::Grpc`] with
//! [`EncodedCodec`] (requests decoded by prost as usual, responses written as they are),
//! `Append` to it with prost's codec over [`super::append_wire::WireAppendRequest`], and
//! every other path to the generated `EventStoreServer`. `Subscribe` answers with a body
//! of its own ([`super::event_store::SubscriptionBody`]): each step's messages, already
//! behind their gRPC length prefixes, go out as one data frame, and the status in the
//! trailers. Without tonic's poll and copy of every message into its buffer, a warm
//! replay took 0.88× the server CPU (BENCHMARKS.md). Its request is decoded by
//! `request_message`, with
//! tonic's rules. Both sides apply the same
//! message size limits. The wire contract does not change: the bytes decode to the
//! messages the generated service would send (tests in [`super::wire`] and the
//! integration tests, which use the generated client).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use prost::bytes::{BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService};
use tower::service_fn;

use super::append_wire::WireAppendRequest;
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

/// Requests decoded by prost as `D`; responses are [`Encoded`] and written as they are.
pub struct EncodedCodec<D>(PhantomData<fn() -> D>);

impl<D> Default for EncodedCodec<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// The response side of [`EncodedCodec`].
pub struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }
}

impl<D: prost::Message + Default + Send + 'static> Codec for EncodedCodec<D> {
    type Encode = Encoded;
    type Decode = D;
    type Encoder = EncodedEncoder;
    type Decoder = RequestDecoder<D>;

    fn encoder(&mut self) -> EncodedEncoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> RequestDecoder<D> {
        RequestDecoder(tonic_prost::ProstDecoder::default())
    }
}

/// The request side of [`EncodedCodec`]: tonic-prost's decoder (same errors).
pub struct RequestDecoder<D>(tonic_prost::ProstDecoder<D>);

impl<D: prost::Message + Default> Decoder for RequestDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        self.0.decode(src)
    }
}

/// A gRPC length prefix's size: the compression flag and a big-endian `u32` length.
pub const PREFIX_BYTES: usize = 5;

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

/// The one message of a request body, decoded as `M`, as tonic's server decodes it: no
/// compression, at most [`limits::MESSAGE_BYTES_MAX`] (`RESOURCE_EXHAUSTED` past it, as
/// every service answers), exactly one message. For the paths that answer with a body of
/// their own instead of through [`Grpc`].
async fn request_message<M, B>(request: http::Request<B>) -> Result<M, Status>
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
    M::decode(&received[PREFIX_BYTES..])
        .map_err(|e| Status::internal(format!("decoding the request: {e}")))
}

/// The mounted `rapport.v1.EventStore` service (see the module doc).
#[derive(Clone)]
pub struct EventStoreEdge {
    service: EventStoreService,
    generated: EventStoreServer<EventStoreService>,
}

impl EventStoreEdge {
    /// Serves `service`, with the message size limits of every service.
    pub fn new(service: EventStoreService) -> Self {
        let generated = EventStoreServer::new(service.clone())
            .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::MESSAGE_BYTES_MAX);
        Self { service, generated }
    }
}

impl NamedService for EventStoreEdge {
    const NAME: &'static str = <EventStoreServer<EventStoreService> as NamedService>::NAME;
}

/// `codec` with the message size limits of every service.
fn limited<C: Codec>(codec: C) -> Grpc<C> {
    Grpc::new(codec).apply_max_message_size_config(
        Some(limits::MESSAGE_BYTES_MAX),
        Some(limits::MESSAGE_BYTES_MAX),
    )
}

fn grpc<D: prost::Message + Default + Send + 'static>() -> Grpc<EncodedCodec<D>> {
    limited(EncodedCodec::default())
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
        match request.uri().path() {
            "/rapport.v1.EventStore/Append" => Box::pin(async move {
                let append = service_fn(move |request| {
                    let service = service.clone();
                    async move { service.append_wire(request).await }
                });
                let codec =
                    tonic_prost::ProstCodec::<pb::AppendResponse, WireAppendRequest>::default();
                Ok(limited(codec).unary(append, request).await)
            }),
            "/rapport.v1.EventStore/ReadStream" => Box::pin(async move {
                let read = service_fn(move |request| {
                    let service = service.clone();
                    async move { service.read_stream_encoded(request).await }
                });
                Ok(grpc::<pb::ReadStreamRequest>().unary(read, request).await)
            }),
            "/rapport.v1.EventStore/ReadAll" => Box::pin(async move {
                let read = service_fn(move |request| {
                    let service = service.clone();
                    async move { service.read_all_encoded(request).await }
                });
                Ok(grpc::<pb::ReadAllRequest>().unary(read, request).await)
            }),
            "/rapport.v1.EventStore/Subscribe" => Box::pin(async move {
                let answer = request_message::<pb::SubscribeRequest, B>(request)
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

    fn decode(body: &[u8], encoding: Option<&str>) -> Result<pb::SubscribeRequest, Status> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(request_message::<pb::SubscribeRequest, _>(request(
                body, encoding,
            )))
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
        // Bytes that are not a SubscribeRequest.
        assert_eq!(code(&[0, 0, 0, 0, 1, 0x08], None), tonic::Code::Internal);
    }
}
