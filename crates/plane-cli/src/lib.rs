//! `plane`, the command-line tool: poke at a running system over any URL,
//! as the `nats` command lets people do, on every backend plane has.
//!
//! The URLs come from the same configuration as every plane program
//! (`docs/config.md`: `--config FILE` or `PLANE_CONFIG`, the `PLANE_…`
//! variables), with `--url` over all of them. [`run`] is the whole tool;
//! `main` only hands it the arguments and the standard output.
//!
//! ```text
//! plane [--config FILE] [--url URL] COMMAND
//!   doctor                                what each plane's URL resolves to: backend, capabilities, state
//!   pub SUBJECT [DATA]                    publish DATA (else standard input)
//!   sub PATTERN                           print events (`*` one token, `>` the rest)
//!   request ENDPOINT [DATA]               a unary call; print the reply
//!   stream ENDPOINT [DATA]                a streamed call; print each reply
//!   serve ENDPOINT                        serve an echo
//!   kv get BUCKET KEY | kv put BUCKET KEY VALUE | kv watch BUCKET [FILTER]
//!   object put BUCKET NAME FILE | object get BUCKET NAME FILE
//!   queue enqueue QUEUE DATA | queue work QUEUE
//!   bench [--calls N]                     serve an echo and time calls to it
//! options of the commands that wait: --count N (stop after N), --for-ms N (stop after N ms)
//! options of calls: --timeout-ms N
//! ```
//!
//! Long-running commands (`sub`, `serve`, `kv watch`, `queue work`) stop
//! at `--count`, at `--for-ms` or at Ctrl-C. Transfers of objects show their
//! progress on standard error.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use plane::config::Config;
use plane::kv::{BucketConfig, WatchEvent};
use plane::objects::ObjectMeta;
use plane::queue::QueueConfig;
use plane::registry::redacted;
use plane::request::{handler_fn, Call, Request, Responder};
use plane::session::Plane;
use plane::{Error, ErrorKind, Result};

/// The usage text.
pub const USAGE: &str = "usage: plane [--config FILE] [--url URL] COMMAND
  doctor                                  each plane's URL: backend, capabilities, connection state
  pub SUBJECT [DATA]                      publish DATA (else standard input)
  sub PATTERN                             print events (`*` one token, `>` the rest)
  request ENDPOINT [DATA]                 a unary call; print the reply
  stream ENDPOINT [DATA]                  a streamed call; print each reply
  serve ENDPOINT                          serve an echo
  kv get BUCKET KEY | kv put BUCKET KEY VALUE | kv watch BUCKET [FILTER]
  object put BUCKET NAME FILE | object get BUCKET NAME FILE
  queue enqueue QUEUE DATA | queue work QUEUE
  bench [--calls N]                       serve an echo and time calls to it
options: --count N, --for-ms N (commands that wait), --timeout-ms N (calls)";

/// Bytes between two progress lines of an object transfer.
const PROGRESS_EVERY: u64 = 8 << 20;
/// Chunk size of an object read from a file.
const CHUNK: usize = 1 << 20;

fn usage_error(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidArgument, format!("{what}\n{USAGE}"))
}

/// The parsed command line.
#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    url: Option<String>,
    count: Option<u64>,
    for_ms: Option<u64>,
    timeout_ms: Option<u64>,
    calls: Option<u64>,
    words: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| usage_error(format!("{name} needs a value")))
        };
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| usage_error(format!("{name} takes a whole number, not `{v}`")))
        };
        match arg.as_str() {
            "--config" => a.config = Some(value("--config")?.into()),
            "--url" => a.url = Some(value("--url")?),
            "--count" => a.count = Some(number("--count", value("--count")?)?),
            "--for-ms" => a.for_ms = Some(number("--for-ms", value("--for-ms")?)?),
            "--timeout-ms" => a.timeout_ms = Some(number("--timeout-ms", value("--timeout-ms")?)?),
            "--calls" => a.calls = Some(number("--calls", value("--calls")?)?),
            "-h" | "--help" => return Err(usage_error("plane: the command-line tool")),
            flag if flag.starts_with("--") => {
                return Err(usage_error(format!("unknown option `{flag}`")))
            }
            word => a.words.push(word.to_owned()),
        }
    }
    Ok(a)
}

/// What a run needs: the configuration, the URL override, the output.
struct Cli<'o> {
    config: Config,
    url: Option<String>,
    args: Args,
    out: &'o mut (dyn Write + Send + Sync),
}

/// Run the command line `args` (without the program name), writing what the
/// command prints to `out`.
///
/// # Errors
/// `InvalidArgument` for a command line that is not one (with the usage),
/// `InvalidConfig` for a bad configuration, and whatever the command's plane
/// fails with.
pub async fn run(args: &[String], out: &mut (dyn Write + Send + Sync)) -> Result<()> {
    let args = parse(args)?;
    let file = args
        .config
        .clone()
        .or_else(|| std::env::var_os(plane::config::CONFIG_ENV).map(Into::into));
    let mut config = Config::load_from(file.as_deref(), std::env::vars())?;
    // `--url nats://h?timeout_ms=500`: the client keys are the policy's.
    let url = args
        .url
        .as_deref()
        .map(|u| config.url_keys(u))
        .transpose()?;
    let mut cli = Cli {
        config,
        url,
        args,
        out,
    };
    cli.dispatch().await
}

fn io(e: std::io::Error) -> Error {
    Error::new(ErrorKind::Other, format!("output: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Cli<'_> {
    fn url(&self, plane: Plane) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| self.config.url_for(plane).to_owned())
    }

    fn word(&self, i: usize, what: &str) -> Result<&str> {
        self.args
            .words
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| usage_error(format!("missing {what}")))
    }

    fn no_more(&self, n: usize) -> Result<()> {
        match self.args.words.get(n) {
            Some(extra) => Err(usage_error(format!("unexpected argument `{extra}`"))),
            None => Ok(()),
        }
    }

    fn say(&mut self, line: impl std::fmt::Display) -> Result<()> {
        writeln!(self.out, "{line}").map_err(io)
    }

    /// DATA from word `i`, else standard input.
    async fn data(&self, i: usize) -> Result<Bytes> {
        if let Some(d) = self.args.words.get(i) {
            self.no_more(i + 1)?;
            return Ok(Bytes::from(d.clone()));
        }
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut buf)
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("standard input: {e}")))?;
        Ok(buf.into())
    }

    /// When a waiting command is to stop: at `--for-ms` or Ctrl-C.
    fn until(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let limit = self.args.for_ms.map(Duration::from_millis);
        async move {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }

    fn enough(&self, n: u64) -> bool {
        self.args.count.is_some_and(|c| n >= c)
    }

    fn call(&self, endpoint: &str, body: Bytes) -> Call {
        let call = Call::new(endpoint, body);
        match self.args.timeout_ms {
            Some(ms) => call.timeout(Duration::from_millis(ms)),
            None => call,
        }
    }

    async fn dispatch(&mut self) -> Result<()> {
        let command = self.word(0, "a command")?.to_owned();
        match command.as_str() {
            "doctor" => self.doctor().await,
            "pub" => self.publish().await,
            "sub" => self.subscribe().await,
            "request" => self.request().await,
            "stream" => self.stream().await,
            "serve" => self.serve().await,
            "kv" => self.kv().await,
            "object" => self.object().await,
            "queue" => self.queue().await,
            "bench" => self.bench().await,
            other => Err(usage_error(format!("unknown command `{other}`"))),
        }
    }

    async fn doctor(&mut self) -> Result<()> {
        self.no_more(1)?;
        let registry = plane::registry();
        for plane in [
            Plane::Request,
            Plane::Events,
            Plane::Kv,
            Plane::Objects,
            Plane::Queue,
        ] {
            let url = self.url(plane);
            let shown = redacted(&url);
            let name = plane.as_str();
            let session = match registry.connect(&url).await {
                Ok(s) => s,
                Err(e) => {
                    self.say(format!("{name:>8}  {shown}  cannot connect: {e}"))?;
                    continue;
                }
            };
            let backend = session.backend();
            let report = match plane {
                Plane::Request => session.requests().await.map(|p| {
                    (
                        p.connection_state(),
                        serde_json::to_string(p.capabilities()),
                    )
                }),
                Plane::Events => session.events().await.map(|p| {
                    (
                        p.connection_state(),
                        serde_json::to_string(p.capabilities()),
                    )
                }),
                Plane::Kv => session.kv().await.map(|p| {
                    (
                        p.connection_state(),
                        serde_json::to_string(p.capabilities()),
                    )
                }),
                Plane::Objects => session.objects().await.map(|p| {
                    (
                        p.connection_state(),
                        serde_json::to_string(p.capabilities()),
                    )
                }),
                Plane::Queue => session.queues().await.map(|p| {
                    (
                        p.connection_state(),
                        serde_json::to_string(p.capabilities()),
                    )
                }),
            };
            match report {
                Ok((state, caps)) => self.say(format!(
                    "{name:>8}  {shown}  backend {backend}, {}, capabilities {}",
                    state.as_str(),
                    caps.unwrap_or_default()
                ))?,
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    self.say(format!("{name:>8}  {shown}  backend {backend}: not served"))?
                }
                Err(e) => self.say(format!("{name:>8}  {shown}  backend {backend}: {e}"))?,
            }
        }
        Ok(())
    }

    async fn publish(&mut self) -> Result<()> {
        let subject = self.word(1, "SUBJECT")?.to_owned();
        let data = self.data(2).await?;
        let events = plane::registry().events(&self.url(Plane::Events)).await?;
        events.publish(&subject, data).await?;
        // At most once, and maybe still buffered: out before the exit.
        events.flush().await?;
        self.say(format!("published to {subject}"))
    }

    async fn subscribe(&mut self) -> Result<()> {
        let pattern = self.word(1, "PATTERN")?.to_owned();
        self.no_more(2)?;
        let events = plane::registry().events(&self.url(Plane::Events)).await?;
        let mut sub = events.subscribe(&pattern).await?;
        // Printed once the subscription is in place, so a script can publish.
        self.say(format!("subscribed to {pattern}"))?;
        let until = self.until();
        tokio::pin!(until);
        let mut n = 0;
        while !self.enough(n) {
            tokio::select! {
                ev = sub.next() => match ev {
                    Some(Ok(ev)) => {
                        n += 1;
                        self.say(format!("{} {}", ev.subject, text(&ev.body().to_bytes())))?;
                    }
                    Some(Err(e)) => return Err(e),
                    None => break,
                },
                _ = &mut until => break,
            }
        }
        Ok(())
    }

    async fn request(&mut self) -> Result<()> {
        let endpoint = self.word(1, "ENDPOINT")?.to_owned();
        let data = self.data(2).await?;
        let requests = self.requests().await?;
        let reply = requests.call_with(self.call(&endpoint, data)).await?;
        self.say(text(&reply.body.to_bytes()))
    }

    async fn requests(&self) -> Result<plane::Requests> {
        let requests = plane::registry()
            .requests(&self.url(Plane::Request))
            .await?;
        self.config.apply(requests)
    }

    async fn stream(&mut self) -> Result<()> {
        let endpoint = self.word(1, "ENDPOINT")?.to_owned();
        let data = self.data(2).await?;
        let requests = self.requests().await?;
        let mut replies = requests.stream(self.call(&endpoint, data)).await?;
        while let Some(reply) = replies.next_reply().await {
            self.say(text(&reply?.body.to_bytes()))?;
        }
        Ok(())
    }

    async fn serve(&mut self) -> Result<()> {
        let endpoint = self.word(1, "ENDPOINT")?.to_owned();
        self.no_more(2)?;
        let requests = self.requests().await?;
        let (served, mut calls) = tokio::sync::mpsc::unbounded_channel::<()>();
        // An echo: a unary call gets its body back; a streamed one gets it
        // as its one reply, then the end.
        let echo = handler_fn(move |r: Request, out: Responder| {
            let served = served.clone();
            async move {
                let _ = served.send(());
                out.send(r.message).await
            }
        });
        let server = requests
            .serve_with(&endpoint, echo, self.config.serve_options_for(&endpoint))
            .await?;
        self.say(format!(
            "serving {endpoint} as instance {}",
            server.instance()
        ))?;
        let until = self.until();
        tokio::pin!(until);
        let mut n = 0;
        while !self.enough(n) {
            tokio::select! {
                c = calls.recv() => match c {
                    Some(()) => n += 1,
                    None => break,
                },
                _ = &mut until => break,
            }
        }
        let killed = server.drain(Duration::from_secs(5)).await;
        self.say(format!("served {n} call(s); {killed} killed at the end"))
    }

    async fn kv(&mut self) -> Result<()> {
        let op = self.word(1, "a kv command (get, put, watch)")?.to_owned();
        let name = self.word(2, "BUCKET")?.to_owned();
        // The command line is checked whole before anything connects.
        let words = match op.as_str() {
            "get" => vec!["KEY"],
            "put" => vec!["KEY", "VALUE"],
            "watch" => vec![],
            other => return Err(usage_error(format!("unknown kv command `{other}`"))),
        };
        for (i, what) in words.iter().enumerate() {
            self.word(3 + i, what)?;
        }
        let kv = plane::registry().kv(&self.url(Plane::Kv)).await?;
        let bucket = match kv.open_bucket(&name).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound && op == "put" => {
                kv.create_bucket(BucketConfig::new(&name)).await?
            }
            Err(e) => return Err(e),
        };
        match op.as_str() {
            "get" => {
                let key = self.word(3, "KEY")?.to_owned();
                self.no_more(4)?;
                match bucket.get(&key).await? {
                    Some(entry) => self.say(text(&entry.value)),
                    None => Err(Error::new(
                        ErrorKind::NotFound,
                        format!("no key `{key}` in bucket `{name}`"),
                    )),
                }
            }
            "put" => {
                let key = self.word(3, "KEY")?.to_owned();
                let value = self.word(4, "VALUE")?.to_owned();
                self.no_more(5)?;
                let revision = bucket.put(&key, value).await?;
                self.say(format!("revision {revision}"))
            }
            "watch" => {
                let filter = self
                    .args
                    .words
                    .get(3)
                    .cloned()
                    .unwrap_or_else(|| ">".to_owned());
                self.no_more(4)?;
                let mut watch = bucket.watch(&filter).await?;
                let until = self.until();
                tokio::pin!(until);
                let mut n = 0;
                while !self.enough(n) {
                    tokio::select! {
                        ev = watch.next() => match ev {
                            Some(Ok(WatchEvent::Entry(e))) => {
                                n += 1;
                                self.say(format!("{:?} {} {} (revision {})", e.op, e.key, text(&e.value), e.revision))?;
                            }
                            Some(Ok(WatchEvent::CaughtUp)) => self.say("-- caught up; live from here")?,
                            Some(Err(e)) => return Err(e),
                            None => break,
                        },
                        _ = &mut until => break,
                    }
                }
                Ok(())
            }
            other => Err(usage_error(format!("unknown kv command `{other}`"))),
        }
    }

    async fn object(&mut self) -> Result<()> {
        let op = self.word(1, "an object command (put, get)")?.to_owned();
        let name = self.word(2, "BUCKET")?.to_owned();
        let object = self.word(3, "NAME")?.to_owned();
        let file = PathBuf::from(self.word(4, "FILE")?);
        self.no_more(5)?;
        let objects = plane::registry().objects(&self.url(Plane::Objects)).await?;
        let bucket = match objects.open_bucket(&name).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound && op == "put" => {
                objects.create_bucket(&name).await?
            }
            Err(e) => return Err(e),
        };
        let started = Instant::now();
        match op.as_str() {
            "put" => {
                let chunks = read_chunks(&file).await?;
                let info = bucket
                    .put_stream(&object, ObjectMeta::default(), chunks)
                    .await?;
                self.say(format!(
                    "put {object}: {} bytes, {} in {:.1?}",
                    info.size,
                    info.digest,
                    started.elapsed()
                ))
            }
            "get" => {
                let reader = bucket.get(&object).await?;
                let total = reader.info.size;
                let mut out = tokio::fs::File::create(&file)
                    .await
                    .map_err(|e| file_error(&file, e))?;
                let mut stream = reader.stream;
                let mut done = 0u64;
                let mut shown = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                        .await
                        .map_err(|e| file_error(&file, e))?;
                    done += chunk.len() as u64;
                    if done - shown >= PROGRESS_EVERY {
                        shown = done;
                        progress(done, Some(total));
                    }
                }
                tokio::io::AsyncWriteExt::flush(&mut out)
                    .await
                    .map_err(|e| file_error(&file, e))?;
                self.say(format!(
                    "got {object}: {done} bytes into {} in {:.1?}",
                    file.display(),
                    started.elapsed()
                ))
            }
            other => Err(usage_error(format!("unknown object command `{other}`"))),
        }
    }

    async fn queue(&mut self) -> Result<()> {
        let op = self.word(1, "a queue command (enqueue, work)")?.to_owned();
        let name = self.word(2, "QUEUE")?.to_owned();
        let queues = plane::registry().queues(&self.url(Plane::Queue)).await?;
        let queue = match queues.open_queue(&name).await {
            Ok(q) => q,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                queues.create_queue(QueueConfig::new(&name)).await?
            }
            Err(e) => return Err(e),
        };
        match op.as_str() {
            "enqueue" => {
                let data = self.data(3).await?;
                queue.enqueue(data).await?;
                self.say(format!("enqueued to {name}"))
            }
            "work" => {
                self.no_more(3)?;
                let deadline = self
                    .args
                    .for_ms
                    .map(|ms| Instant::now() + Duration::from_millis(ms));
                let mut n = 0;
                while !self.enough(n) {
                    let wait = match deadline {
                        Some(d) => match d.checked_duration_since(Instant::now()) {
                            Some(left) => left.min(Duration::from_secs(1)),
                            None => break,
                        },
                        None => Duration::from_secs(1),
                    };
                    let Some(job) = queue.receive(wait).await? else {
                        continue;
                    };
                    // Printed, then acked: a crash in between redelivers it.
                    self.say(text(&job.message.body.to_bytes()))?;
                    job.ack().await?;
                    n += 1;
                }
                Ok(())
            }
            other => Err(usage_error(format!("unknown queue command `{other}`"))),
        }
    }

    async fn bench(&mut self) -> Result<()> {
        self.no_more(1)?;
        let calls = self.args.calls.unwrap_or(2_000).max(1);
        let requests = self.requests().await?;
        let endpoint = format!("plane-bench-{:08x}", rand_u32());
        let echo = plane::request::unary_fn(|r: Request| async move { Ok(r.message) });
        let server = requests.serve(&endpoint, echo).await?;
        let payload = Bytes::from(vec![0x5a; 64]);
        let mut latencies = Vec::with_capacity(calls as usize);
        let started = Instant::now();
        for _ in 0..calls {
            let t = Instant::now();
            requests.call(&endpoint, payload.clone()).await?;
            latencies.push(t.elapsed());
        }
        let one_by_one = started.elapsed();
        let started = Instant::now();
        let in_flight = 64;
        let mut pending = futures_util::stream::iter(0..calls)
            .map(|_| requests.call(&endpoint, payload.clone()))
            .buffer_unordered(in_flight);
        while let Some(r) = pending.next().await {
            r?;
        }
        let concurrent = started.elapsed();
        drop(pending);
        drop(server);
        latencies.sort();
        let pct =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        self.say(format!(
            "{} on {}: {calls} calls of 64 B one at a time: {:.0} calls/s, p50 {:?}, p99 {:?}; {in_flight} in flight: {:.0} calls/s",
            requests.backend_name(),
            redacted(&self.url(Plane::Request)),
            calls as f64 / one_by_one.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            calls as f64 / concurrent.as_secs_f64(),
        ))
    }
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

fn file_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Other, format!("{}: {e}", path.display()))
}

/// A progress line on standard error.
fn progress(done: u64, total: Option<u64>) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match total {
        Some(t) if t > 0 => eprintln!(
            "  {:.1} / {:.1} MiB ({:.0}%)",
            mib(done),
            mib(t),
            done as f64 * 100.0 / t as f64
        ),
        _ => eprintln!("  {:.1} MiB", mib(done)),
    }
}

/// The file at `path` as a stream of chunks, with progress on standard error.
async fn read_chunks(path: &Path) -> Result<plane::objects::ByteStream> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| file_error(path, e))?;
    let total = file.metadata().await.ok().map(|m| m.len());
    let path = path.to_path_buf();
    let stream =
        futures_util::stream::try_unfold((file, 0u64, 0u64), move |(mut file, done, shown)| {
            let path = path.clone();
            async move {
                let mut buf = vec![0u8; CHUNK];
                let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                    .await
                    .map_err(|e| file_error(&path, e))?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                let done = done + n as u64;
                let shown = if done - shown >= PROGRESS_EVERY {
                    progress(done, total);
                    done
                } else {
                    shown
                };
                Ok(Some((Bytes::from(buf), (file, done, shown))))
            }
        });
    Ok(stream.boxed())
}
