//! HTTP/2: plane-http (`h2c://`) against hyper used directly, an HTTP/2
//! echo server and client with the same connection shape plane has: one
//! prior-knowledge HTTP/2 connection carrying every call as its own stream,
//! `TCP_NODELAY` on both ends, the same flow-control windows. A unary call
//! is a `POST` of the payload answered with it; a streamed one (`n<count>`)
//! is answered with that many 64 B data frames.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::drive::{self, Pair, Params, Streamed, Unary, SMALL};
use crate::plane_ops;
use crate::report::Row;
use crate::{step, Result};

/// plane-http's HTTP/2 windows, so both sides get the same flow control.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Run the request scenarios on `h2c://` (plane-http has no events plane).
pub async fn run(rows: &mut Vec<Row>, p: &Params) -> Result<()> {
    let registry = plane::registry();
    let requests = registry
        .requests("h2c://127.0.0.1:0?discovery=mem%3A%2F%2Fbench-http")
        .await?;
    let _servers = plane_ops::serve(&requests).await?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(raw_server(listener));
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(TokioIo::new(stream))
        .await?;
    let client = tokio::spawn(connection);

    let unary = Pair {
        plane: plane_ops::plane_unary(&requests),
        raw: Some(raw_unary(sender.clone(), Bytes::from(vec![0x5a; SMALL]))),
    };
    step(
        rows,
        "http unary_latency",
        drive::unary_latency("http", &unary, p),
    )
    .await?;
    step(
        rows,
        "http unary_throughput",
        drive::unary_throughput("http", &unary, p),
    )
    .await?;
    step(
        rows,
        "http unary_allocs",
        drive::unary_allocs("http", "unary_latency", &unary, p),
    )
    .await?;
    let awaiting = Pair {
        plane: plane_ops::plane_unary_await(&requests),
        raw: Some(raw_unary(sender.clone(), plane_ops::await_payload())),
    };
    step(
        rows,
        "http unary_await",
        drive::unary_await("http", &awaiting, p),
    )
    .await?;
    step(rows, "http paced_slo", drive::paced_slo("http", &unary, p)).await?;
    let streamed = Pair {
        plane: plane_ops::plane_streamed(&requests),
        raw: Some(raw_streamed(sender)),
    };
    step(
        rows,
        "http stream_throughput",
        drive::stream_throughput("http", &streamed, p),
    )
    .await?;
    client.abort();
    server.abort();
    Ok(())
}

/// Serve every connection as HTTP/2: echo the body, or stream `n` chunks.
async fn raw_server(listener: TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                let reply = match body.strip_prefix(b"n") {
                    Some(n) => Chunks(
                        std::str::from_utf8(n)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                    )
                    .boxed_unsync(),
                    None => {
                        if body.first() == Some(&b'y') {
                            tokio::task::yield_now().await;
                        }
                        Full::new(body).boxed_unsync()
                    }
                };
                Ok::<_, hyper::Error>(Response::new(reply))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_concurrent_streams(4096)
                .serve_connection(TokioIo::new(s), service)
                .await;
        });
    }
}

/// A response of `n` 64 B data frames.
struct Chunks(u32);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.0 == 0 {
            return Poll::Ready(None);
        }
        this.0 -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[0x5a; SMALL])))))
    }
}

fn post(body: Bytes) -> Result<Request<Full<Bytes>>> {
    Ok(Request::post("http://bench/echo").body(Full::new(body))?)
}

fn raw_unary(sender: SendRequest<Full<Bytes>>, payload: Bytes) -> Unary {
    let sender = Arc::new(sender);
    Arc::new(move || {
        let mut sender = (*sender).clone();
        let payload = payload.clone();
        Box::pin(async move {
            let response = sender.send_request(post(payload)?).await?;
            let reply = response.into_body().collect().await?.to_bytes();
            if reply.len() != SMALL {
                return Err(format!("echo of {} bytes", reply.len()).into());
            }
            Ok(())
        })
    })
}

fn raw_streamed(sender: SendRequest<Full<Bytes>>) -> Streamed {
    let sender = Arc::new(sender);
    Arc::new(move |n| {
        let mut sender = (*sender).clone();
        Box::pin(async move {
            let response = sender
                .send_request(post(Bytes::from(format!("n{n}")))?)
                .await?;
            let mut body = response.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    bytes += data.len() as u64;
                }
            }
            // Counted in chunks, however HTTP/2 framed them.
            Ok(bytes / SMALL as u64)
        })
    })
}
