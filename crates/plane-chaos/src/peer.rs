//! The serving peer of the brokerless fault tests (`tests/brokerless.rs`).
//!
//! It is a process of its own so that a test can kill it with SIGKILL, and
//! the test starts it inside a network namespace it made so that it can cut
//! it off. On the URL given it serves:
//! - `ENDPOINT`: a unary echo;
//! - `ENDPOINT.ticks`: a stream that sends the request's body back every
//!   [`TICK`] until the caller goes, so a fault always lands mid-stream.
//!
//! It prints `ready` once both are registered in discovery, and exits by
//! itself after `--for-secs`, so a peer a failed test left behind does not
//! linger.

use std::io::Write;
use std::time::Duration;

use plane_core::request::{handler_fn, unary_fn, Request, Responder};
use plane_core::Error;

/// The interval between two replies of a ticking stream.
pub const TICK: Duration = Duration::from_millis(50);

/// The arguments of `plane-chaos peer`.
#[derive(Debug, Clone)]
pub struct PeerArgs {
    /// The backend URL to serve on (any brokerless backend).
    pub url: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// How long to serve before exiting.
    pub serve_for: Duration,
}

/// Serve until `serve_for` has passed.
pub async fn serve(args: PeerArgs) -> Result<(), Error> {
    let session = plane::registry().connect(&args.url).await?;
    let requests = session.requests().await?;
    let _echo = requests
        .serve(
            &args.endpoint,
            unary_fn(|r: Request| async move { Ok(r.message) }),
        )
        .await?;
    let ticks = handler_fn(|r: Request, out: Responder| async move {
        let gone: Result<(), Error> = loop {
            // An error here is the caller gone: the stream ends with it.
            if let Err(e) = out.send(r.message.clone()).await {
                break Err(e);
            }
            tokio::time::sleep(TICK).await;
        };
        gone
    });
    let _ticks = requests
        .serve(&format!("{}.ticks", args.endpoint), ticks)
        .await?;
    let mut stdout = std::io::stdout();
    // The test reads this line to know the peer is listed in discovery.
    let _ = writeln!(stdout, "ready");
    let _ = stdout.flush();
    tokio::time::sleep(args.serve_for).await;
    Ok(())
}
