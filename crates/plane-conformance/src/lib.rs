//! plane's shared conformance suite.
//!
//! One async function per behaviour, grouped by plane in [`request`],
//! [`events`], [`kv`], [`objects`], [`queue`] and [`discovery`]. Every backend's
//! test module builds a [`Target`] and calls [`run`]; differences between
//! backends are the planes a target serves, the capabilities it declares, and
//! the [`Hooks`] it offers — never the backend's name.
//!
//! A case that does not apply is skipped with a reason; an undeclared
//! capability must be refused with `Unsupported` (each plane's
//! `unsupported_ops_refused` case checks both directions). The report written
//! by [`Report::write`] is the stable, machine-readable format of
//! `CONFORMANCE.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use plane_core::{Error, ErrorKind, Events, Kv, Objects, Queues, Requests};

pub mod discovery;
pub mod events;
pub mod kv;
pub mod objects;
pub mod peer;
pub mod pki;
pub mod queue;
pub mod request;

/// Why a case did not pass.
#[derive(Debug)]
pub enum Verdict {
    /// The case does not apply; the reason is reported.
    Skip(String),
    /// An assertion failed; the message says which.
    Fail(String),
}

/// What a case returns.
pub type CaseResult = Result<(), Verdict>;

impl From<Error> for Verdict {
    fn from(e: Error) -> Self {
        Verdict::Fail(format!("unexpected error: {e}"))
    }
}

/// Fail the case unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Verdict::Fail(format!("{} (at {}:{}): {}", stringify!($cond), file!(), line!(), format!($($msg)+))));
        }
    };
    ($cond:expr) => {
        if !$cond {
            return Err($crate::Verdict::Fail(format!("{} (at {}:{})", stringify!($cond), file!(), line!())));
        }
    };
}

/// Fail the case unless the two values are equal.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr $(, $($msg:tt)+)?) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err($crate::Verdict::Fail(format!(
                "{} == {} failed (at {}:{}): left {:?}, right {:?}{}",
                stringify!($left), stringify!($right), file!(), line!(), l, r,
                { let _m = String::new(); $( let _m = format!(": {}", format!($($msg)+)); )? _m }
            )));
        }
    }};
}

/// Fail the case unless `result` is an error of exactly `kind`; evaluates to the error.
#[macro_export]
macro_rules! check_kind {
    ($result:expr, $kind:expr) => {
        match $result {
            Ok(v) => {
                return Err($crate::Verdict::Fail(format!(
                    "{} succeeded with {:?}, expected error kind {:?} (at {}:{})",
                    stringify!($result),
                    v,
                    $kind,
                    file!(),
                    line!()
                )))
            }
            Err(e) if e.kind() == $kind => e,
            Err(e) => {
                return Err($crate::Verdict::Fail(format!(
                    "{} failed with kind {:?} ({}), expected {:?} (at {}:{})",
                    stringify!($result),
                    e.kind(),
                    e,
                    $kind,
                    file!(),
                    line!()
                )))
            }
        }
    };
}

/// Skip the case with a reason.
#[macro_export]
macro_rules! skip {
    ($($msg:tt)+) => {
        return Err($crate::Verdict::Skip(format!($($msg)+)))
    };
}

/// Operations a test fixture can perform on a backend's server, where it has one.
pub trait Hooks: Send + Sync + 'static {
    /// Restart the broker, server or serving peer, keeping its storage.
    /// `None`: this target has nothing to restart (cases needing it skip).
    fn restart(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        None
    }

    /// Send `garbage` as raw bytes to the transport that serves `endpoint`, as
    /// a misbehaving peer would. `None`: the target has no byte-level
    /// transport to corrupt.
    fn send_garbage<'a>(
        &'a self,
        endpoint: &'a str,
        garbage: &'a [u8],
    ) -> Option<BoxFuture<'a, Result<(), String>>> {
        let _ = (endpoint, garbage);
        None
    }
}

/// Hooks of a target that offers none.
#[derive(Debug, Default)]
pub struct NoHooks;
impl Hooks for NoHooks {}

/// A backend under test: the planes it serves and its hooks.
pub struct Target {
    /// Backend name for the report (`"mem"`, `"nats"`).
    pub backend: String,
    /// How its server was obtained: `in-process`, `testcontainers` or `process`.
    pub provider: String,
    /// Server version, where there is one.
    pub server: Option<String>,
    /// Request plane, if served.
    pub requests: Option<Requests>,
    /// Events plane, if served.
    pub events: Option<Events>,
    /// Kv plane, if served (discovery runs over it too, unless
    /// [`discovery_kv`](Target::discovery_kv) is set).
    pub kv: Option<Kv>,
    /// The kv plane discovery runs over when it is not the backend's own:
    /// brokerless backends find peers through another backend's kv.
    pub discovery_kv: Option<Kv>,
    /// Objects plane, if served.
    pub objects: Option<Objects>,
    /// Queue plane, if served.
    pub queues: Option<Queues>,
    /// Fixture operations.
    pub hooks: Arc<dyn Hooks>,
}

impl Target {
    /// A target serving no plane yet.
    pub fn new(backend: impl Into<String>, provider: impl Into<String>) -> Self {
        Target {
            backend: backend.into(),
            provider: provider.into(),
            server: None,
            requests: None,
            events: None,
            kv: None,
            discovery_kv: None,
            objects: None,
            queues: None,
            hooks: Arc::new(NoHooks),
        }
    }

    /// Build every plane the registry's backend for `url` serves; planes it
    /// refuses with `Unsupported` are left out (their cases skip).
    pub async fn from_url(
        registry: &plane_core::Registry,
        backend: impl Into<String>,
        provider: impl Into<String>,
        url: &str,
    ) -> Result<Self, Error> {
        fn keep<T>(r: Result<T, Error>) -> Result<Option<T>, Error> {
            match r {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.kind() == ErrorKind::Unsupported => Ok(None),
                Err(e) => Err(e),
            }
        }
        let mut t = Target::new(backend, provider);
        t.requests = keep(registry.requests(url).await)?;
        t.events = keep(registry.events(url).await)?;
        t.kv = keep(registry.kv(url).await)?;
        t.objects = keep(registry.objects(url).await)?;
        t.queues = keep(registry.queues(url).await)?;
        Ok(t)
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// What a case gets: the target plus unique names.
pub struct Ctx<'a> {
    /// The backend under test.
    pub target: &'a Target,
    tag: String,
}

impl<'a> Ctx<'a> {
    fn new(target: &'a Target) -> Self {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let r: u32 = rand::random();
        Ctx {
            target,
            tag: format!("t{n}x{r:08x}"),
        }
    }

    /// A name unique to this case and run (valid as bucket, stream, queue,
    /// endpoint, group or consumer name, and as a subject token).
    pub fn name(&self, base: &str) -> String {
        format!("{}_{base}", self.tag)
    }

    /// The request plane, or a skip.
    pub fn requests(&self) -> Result<&'a Requests, Verdict> {
        self.target
            .requests
            .as_ref()
            .ok_or_else(|| Verdict::Skip("backend does not serve the request plane".into()))
    }

    /// The events plane, or a skip.
    pub fn events(&self) -> Result<&'a Events, Verdict> {
        self.target
            .events
            .as_ref()
            .ok_or_else(|| Verdict::Skip("backend does not serve the events plane".into()))
    }

    /// The kv plane, or a skip.
    pub fn kv(&self) -> Result<&'a Kv, Verdict> {
        self.target
            .kv
            .as_ref()
            .ok_or_else(|| Verdict::Skip("backend does not serve the kv plane".into()))
    }

    /// The kv plane discovery runs over: the target's
    /// [`discovery_kv`](Target::discovery_kv), else its own kv, else a skip.
    pub fn discovery_kv(&self) -> Result<&'a Kv, Verdict> {
        self.target
            .discovery_kv
            .as_ref()
            .or(self.target.kv.as_ref())
            .ok_or_else(|| Verdict::Skip("backend has no kv plane to run discovery over".into()))
    }

    /// The objects plane, or a skip.
    pub fn objects(&self) -> Result<&'a Objects, Verdict> {
        self.target
            .objects
            .as_ref()
            .ok_or_else(|| Verdict::Skip("backend does not serve the objects plane".into()))
    }

    /// The queue plane, or a skip.
    pub fn queues(&self) -> Result<&'a Queues, Verdict> {
        self.target
            .queues
            .as_ref()
            .ok_or_else(|| Verdict::Skip("backend does not serve the queue plane".into()))
    }

    /// Restart the target's server, or skip when it has none.
    pub async fn restart(&self) -> CaseResult {
        match self.target.hooks.restart() {
            None => Err(Verdict::Skip(
                "target has no server to restart (in-process backend)".into(),
            )),
            Some(fut) => fut
                .await
                .map_err(|e| Verdict::Fail(format!("restart hook failed: {e}"))),
        }
    }
}

/// Wait for `fut` at most `limit`, failing the case with `what` on timeout.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T, Verdict> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Verdict::Fail(format!("timed out after {limit:?} waiting for {what}")))
}

/// A case's entry point.
pub type CaseFn = for<'a> fn(&'a Ctx<'a>) -> BoxFuture<'a, CaseResult>;

/// One conformance case.
#[derive(Clone, Copy)]
pub struct Case {
    /// Plane section (`"request"`, `"kv"`, ...).
    pub plane: &'static str,
    /// Case name, stable across releases.
    pub name: &'static str,
    /// The check.
    pub run: CaseFn,
}

/// Build a [`Case`] from an `async fn name(cx: &Ctx<'_>) -> CaseResult` in scope.
#[macro_export]
macro_rules! case {
    ($plane:literal, $f:ident) => {
        $crate::Case {
            plane: $plane,
            name: stringify!($f),
            run: |cx| Box::pin($f(cx)),
        }
    };
}

/// Every case, in catalog order.
pub fn all_cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(request::cases());
    v.extend(events::cases());
    v.extend(kv::cases());
    v.extend(objects::cases());
    v.extend(queue::cases());
    v.extend(discovery::cases());
    v
}

/// Outcome of one case in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Pass,
    /// An assertion failed.
    Fail,
    /// Did not apply.
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseReport {
    /// Plane section.
    pub plane: String,
    /// Case name.
    pub case: String,
    /// Outcome.
    pub status: Status,
    /// Duration of a passed or failed case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
    /// Why it was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A backend's conformance report (`target/conformance/<backend>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Backend name.
    pub backend: String,
    /// How the server was obtained.
    pub provider: String,
    /// Server version, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Every case run.
    pub cases: Vec<CaseReport>,
}

impl Report {
    /// Cases that failed.
    pub fn failures(&self) -> Vec<&CaseReport> {
        self.cases
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect()
    }

    /// Count of cases with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.cases.iter().filter(|c| c.status == status).count()
    }

    /// Write the report as `<dir>/<backend>.json`; returns the path.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.backend));
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&path, json + "\n")?;
        Ok(path)
    }

    /// A human summary: one line per non-passing case, then the counts.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for c in &self.cases {
            if c.status != Status::Pass {
                s.push_str(&format!(
                    "{:>4} {}/{}: {}\n",
                    match c.status {
                        Status::Fail => "FAIL",
                        _ => "skip",
                    },
                    c.plane,
                    c.case,
                    c.reason.as_deref().unwrap_or("")
                ));
            }
        }
        s.push_str(&format!(
            "{}: {} cases, {} passed, {} failed, {} skipped\n",
            self.backend,
            self.cases.len(),
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Skip)
        ));
        s
    }
}

/// Where reports go: `$CARGO_TARGET_DIR/conformance`, else `target/conformance`
/// under the workspace root.
pub fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("conformance")
}

/// A backend's conformance test: run the cases `PLANE_CONFORMANCE_ONLY`
/// selects ([`Filter::from_env`]) against `target`, write the report to
/// [`report_dir`], and check that every case passed or was skipped with a
/// reason.
///
/// # Panics
/// When the report cannot be written, a case was skipped without a reason,
/// or a case failed.
pub async fn assert_conforms(target: &Target) -> Report {
    let report = run_and_report(target).await;
    assert!(
        report.failures().is_empty(),
        "conformance failures:\n{}",
        report.summary()
    );
    report
}

/// Like [`assert_conforms`], but leaves failed cases to the caller (which
/// may run several targets before judging).
///
/// # Panics
/// When the report cannot be written or a case was skipped without a reason.
pub async fn run_and_report(target: &Target) -> Report {
    let report = run(target, &Filter::from_env()).await;
    let path = report.write(&report_dir()).expect("write report");
    eprintln!("{}report: {}", report.summary(), path.display());
    for skipped in report.cases.iter().filter(|c| c.status == Status::Skip) {
        assert!(
            skipped.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{}/{} skipped without a reason",
            skipped.plane,
            skipped.case
        );
    }
    report
}

/// Which cases to run.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Substrings of `plane/case`; empty runs everything.
    pub only: Vec<String>,
    /// Per-case time limit; default 60 s.
    pub case_timeout: Option<Duration>,
}

impl Filter {
    /// From the `PLANE_CONFORMANCE_ONLY` environment variable (comma-separated
    /// substrings of `plane/case`), for running a subset while debugging.
    /// The report of a narrowed run lists only the cases it ran.
    pub fn from_env() -> Self {
        let only = std::env::var("PLANE_CONFORMANCE_ONLY")
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Filter {
            only,
            case_timeout: None,
        }
    }

    fn selects(&self, case: &Case) -> bool {
        let id = format!("{}/{}", case.plane, case.name);
        self.only.is_empty() || self.only.iter().any(|o| id.contains(o.as_str()))
    }
}

/// Run the selected cases one after another against `target`.
///
/// Cases run sequentially: several involve timing (ack waits, TTLs) that
/// would be distorted by running beside each other on a small machine.
pub async fn run(target: &Target, filter: &Filter) -> Report {
    let limit = filter.case_timeout.unwrap_or(Duration::from_secs(60));
    let mut cases = Vec::new();
    for case in all_cases().into_iter().filter(|c| filter.selects(c)) {
        let cx = Ctx::new(target);
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(limit, AssertUnwindSafe((case.run)(&cx)).catch_unwind()).await;
        let millis = Some(started.elapsed().as_millis() as u64);
        let (status, reason) = match outcome {
            Err(_) => (
                Status::Fail,
                Some(format!("case timed out after {limit:?}")),
            ),
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                (Status::Fail, Some(format!("case panicked: {msg}")))
            }
            Ok(Ok(Ok(()))) => (Status::Pass, None),
            Ok(Ok(Err(Verdict::Skip(r)))) => (Status::Skip, Some(r)),
            Ok(Ok(Err(Verdict::Fail(r)))) => (Status::Fail, Some(r)),
        };
        let millis = if status == Status::Skip { None } else { millis };
        eprintln!(
            "conformance {} {}/{} {:?}{}",
            target.backend,
            case.plane,
            case.name,
            status,
            reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        cases.push(CaseReport {
            plane: case.plane.to_owned(),
            case: case.name.to_owned(),
            status,
            millis,
            reason,
        });
    }
    Report {
        backend: target.backend.clone(),
        provider: target.provider.clone(),
        server: target.server.clone(),
        cases,
    }
}
