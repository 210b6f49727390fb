//! The `EventStore` service as the server mounts it: the generated service, except that
//! `ReadStream`, `ReadAll` and `Subscribe` answer with protobuf bytes the server wrote
//! straight from the stored events ([`super::wire`]), not with prost messages it built
//! and then encoded (most of a replay's server time went there), and `Append` decodes
//! its events' bodies late ([`super::append_wire`]: custom data goes from the request's
//! bytes straight to its stored bytes).
//!
//! [`EventStoreEdge`] routes those three paths to [`tonic::server::Grpc`] with
//! [`EncodedCodec`] (requests decoded by prost as usual, responses written as they are),
//! `Append` to it with prost's codec over [`super::append_wire::WireAppendRequest`], and
//! every other path to the generated `EventStoreServer`. Both sides apply the same
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
                let subscribe = service_fn(move |request| {
                    let answer = service.subscribe_encoded(request);
                    async move { answer }
                });
                Ok(grpc::<pb::SubscribeRequest>()
                    .server_streaming(subscribe, request)
                    .await)
            }),
            _ => self.generated.call(request),
        }
    }
}
