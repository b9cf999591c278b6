//! The tower layer in front of the gRPC services, and the request body it
//! wraps: each message's length is checked and reserved from the in-flight
//! budget as its prefix arrives, and its wire format is scanned once it is
//! complete, before tonic decodes it.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame};
use tonic::{body::Body, Status};

use super::{Intake, Method, Reservation};
use crate::error::Error;

/// The layer: put it in front of the gRPC services.
#[derive(Debug, Clone)]
pub struct IntakeLayer(Arc<Intake>);

impl IntakeLayer {
    /// A layer applying `intake`'s rules.
    pub fn new(intake: Arc<Intake>) -> Self {
        Self(intake)
    }
}

impl<S> tower::Layer<S> for IntakeLayer {
    type Service = IntakeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IntakeService {
            inner,
            intake: self.0.clone(),
        }
    }
}

/// See [`IntakeLayer`].
#[derive(Debug, Clone)]
pub struct IntakeService<S> {
    inner: S,
    intake: Arc<Intake>,
}

type Held = Arc<Mutex<Vec<Reservation>>>;

impl<S, ResBody> tower::Service<http::Request<Body>> for IntakeService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = self.intake.method(req.uri().path());
        let held: Held = Arc::default();
        let (parts, body) = req.into_parts();
        let body = Body::new(IntakeBody {
            inner: body,
            intake: self.intake.clone(),
            method,
            buf: BytesMut::new(),
            header: None,
            ready: VecDeque::new(),
            held: held.clone(),
            failed: false,
        });
        let fut = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let out = fut.await;
            // A unary request is decoded and dropped by now.
            drop(held);
            out
        })
    }
}

struct IntakeBody {
    inner: Body,
    intake: Arc<Intake>,
    method: Method,
    /// The message being received, its 5-byte prefix first.
    buf: BytesMut,
    /// (compressed, length) of the message being received.
    header: Option<(bool, usize)>,
    /// Checked messages not yet handed on.
    ready: VecDeque<Bytes>,
    held: Held,
    failed: bool,
}

impl IntakeBody {
    /// Takes `bytes` of the in-flight budget for this request, held until
    /// it is done; refused when the budget is spent.
    fn reserve(&self, bytes: usize) -> Result<(), Status> {
        let r = self.intake.budget.try_reserve(bytes).ok_or_else(|| {
            self.intake.refused(
                "inflight_budget",
                Status::resource_exhausted(format!(
                    "the broker already holds max_inflight_request_bytes ({}) \
                     of requests; retry later",
                    self.intake.budget.max
                )),
            )
        })?;
        self.held.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        Ok(())
    }

    /// Moves complete, checked messages from `buf` to `ready`.
    fn process(&mut self) -> Result<(), Status> {
        loop {
            let (compressed, len) = match self.header {
                Some(h) => h,
                None => {
                    if self.buf.len() < 5 {
                        return Ok(());
                    }
                    let compressed = self.buf[0] != 0;
                    let len =
                        u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                            as usize;
                    let m = &self.method;
                    if let Some(max) = m
                        .event_bytes
                        .filter(|_| len > m.max_bytes && len <= self.intake.max_request_bytes)
                    {
                        let why = format!(
                            "the request is {len} bytes: its event exceeds \
                             max_event_bytes ({max}); refused before decoding"
                        );
                        return Err(self
                            .intake
                            .refused("message_size", Error::invalid("event", why).into()));
                    }
                    if len > m.max_bytes {
                        return Err(self.intake.refused(
                            "message_size",
                            Status::out_of_range(format!(
                                "decoded message length too large: found {len} bytes, \
                                 the limit for this method is {} ({})",
                                m.max_bytes, m.why
                            )),
                        ));
                    }
                    if self.method.client_streaming {
                        // A stream holds its latest message only.
                        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    }
                    self.reserve(len + 5)?;
                    self.buf.reserve((len + 5).saturating_sub(self.buf.len()));
                    self.header = Some((compressed, len));
                    (compressed, len)
                }
            };
            if self.buf.len() < len + 5 {
                return Ok(());
            }
            let message = self.buf.split_to(len + 5).freeze();
            self.header = None;
            if let (false, Some(shape)) = (compressed, self.method.input) {
                let estimate = self.intake.scan(shape, &message[5..])?;
                self.reserve(estimate)?;
            }
            // Compressed messages go on unchecked: the server accepts no
            // compression, so tonic refuses them without decoding.
            self.ready.push_back(message);
        }
    }
}

impl HttpBody for IntakeBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.failed {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // A cut-off message goes on as it is: tonic reports the
                    // broken framing.
                    if this.buf.has_remaining() {
                        let rest = this.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        if let Err(status) = this.process() {
                            this.failed = true;
                            this.buf = BytesMut::new();
                            return Poll::Ready(Some(Err(status)));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.buf.is_empty() && self.inner.is_end_stream()
    }
}
