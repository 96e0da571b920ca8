//! tonic refuses a request message over the server's size limit with OUT_OF_RANGE; gRPC's
//! convention, and this server's for every other limit, is RESOURCE_EXHAUSTED. This layer
//! rewrites that one status, wherever tonic puts it: in the response headers or, for a
//! unary call whose request it could not decode, in the trailers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::{self, HeaderMap, HeaderValue};

/// Percent-encoded, as grpc-message is on the wire.
const MESSAGE: &str = "the%20request%20is%20larger%20than%20the%20server%20accepts%20(4%20MiB)";

/// Rewrites the status of a response, for use with `tower::util::MapResponseLayer`.
pub fn map_response(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    rewrite(&mut parts.headers);
    http::Response::from_parts(parts, tonic::body::Body::new(Trailers { inner: body }))
}

fn rewrite(headers: &mut HeaderMap) {
    let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            // grpc-message is percent-encoded on the wire.
            .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if oversized {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert("grpc-message", HeaderValue::from_static(MESSAGE));
    }
}

/// A response body whose trailers pass through [`rewrite`].
struct Trailers {
    inner: tonic::body::Body,
}

impl Body for Trailers {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx).map(|frame| {
            frame.map(|result| {
                result.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        rewrite(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
