//! `plane::config`: the layering (defaults < file < environment < code),
//! what a loaded configuration does to a request handle, and a typed error
//! naming the key for every mistake (with "did you mean" where it can).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plane::config::Config;
use plane::policy::{InFlightLimit, OnError, Overflow};
use plane::request::{unary_fn, Request};
use plane::session::Plane;
use plane::ErrorKind;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A config file under the system's temporary directory.
struct File(PathBuf);

impl File {
    fn new(text: &str) -> Self {
        File::named(text, "toml")
    }

    /// A file whose name ends in `.{extension}`.
    fn named(text: &str, extension: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("plane-config-{:016x}.{extension}", rand_u64()));
        std::fs::write(&path, text).expect("write the config file");
        File(path)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32
}

/// The plugin gateway's messaging block, written as a plane config file.
const GATEWAY: &str = include_str!("../examples/config/gateway.toml");
/// The same in YAML.
const GATEWAY_YAML: &str = include_str!("../examples/config/gateway.yaml");

#[test]
fn layers_apply_in_order_defaults_file_environment() {
    let file = File::new(
        r#"
        url = "mem://from-file"
        events = "mem://events-from-file"
        [client]
        timeout_ms = 2000
        max_attempts = 3
        max_in_flight = 64
        overflow = "queue"
        max_waiting = 10
        [server]
        max_in_flight = 99
        "#,
    );
    // Defaults only.
    let none = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(none.url_for(Plane::Request), plane::config::DEFAULT_URL);
    assert_eq!(none.client.timeout, None);
    assert_eq!(none.client.in_flight_limit(), None);

    // The file over the defaults.
    let file_only = Config::load_from(Some(&file.0), env(&[])).unwrap();
    assert_eq!(file_only.url_for(Plane::Request), "mem://from-file");
    assert_eq!(file_only.url_for(Plane::Events), "mem://events-from-file");
    assert_eq!(file_only.client.timeout, Some(Duration::from_millis(2000)));
    assert_eq!(file_only.client.policy.retry.max_attempts, 3);
    assert_eq!(
        file_only.client.in_flight_limit(),
        Some(InFlightLimit::queue(64, 10))
    );
    assert_eq!(file_only.serve_options().max_in_flight, 99);

    // The environment over the file: what it names wins, the rest stays.
    let layered = Config::load_from(
        Some(&file.0),
        env(&[
            ("PLANE_URL", "mem://from-env"),
            ("PLANE_CLIENT_TIMEOUT_MS", "3000"),
            ("PLANE_CLIENT_OVERFLOW", "shed"),
            ("PLANE_SERVER_MAX_IN_FLIGHT", "7"),
            // A program's own variable under the prefix is left alone.
            ("PLANE_MY_APP_REGION", "eu-1"),
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    assert_eq!(layered.url_for(Plane::Request), "mem://from-env");
    // A plane's own URL beats the URL for every plane, whatever the layer.
    assert_eq!(layered.url_for(Plane::Events), "mem://events-from-file");
    assert_eq!(layered.client.timeout, Some(Duration::from_millis(3000)));
    assert_eq!(layered.client.policy.retry.max_attempts, 3);
    assert_eq!(
        layered.client.in_flight_limit(),
        Some(InFlightLimit::shed(64, 10))
    );
    assert_eq!(layered.serve_options().max_in_flight, 7);
}

#[tokio::test]
async fn a_loaded_config_sets_the_handle_and_code_overrides_it() {
    let config = Config::from_toml(
        r#"
        url = "mem://config-apply"
        [client]
        timeout_ms = 150
        max_attempts = 4
        max_in_flight = 8
        [client.endpoints."payments.charge"]
        on_error = "end"
        "#,
        "inline",
    )
    .unwrap();
    let registry = plane::registry();
    let requests = registry
        .requests(config.url_for(Plane::Request))
        .await
        .unwrap();
    let requests = config.apply(requests).unwrap();
    assert_eq!(requests.policy_for("search").retry.max_attempts, 4);
    assert_eq!(requests.policy_for("search").on_error, OnError::Retry);
    assert_eq!(
        requests.policy_for("payments.charge").on_error,
        OnError::End
    );
    assert_eq!(requests.in_flight_limit(), Some(InFlightLimit::reject(8)));

    // The file's timeout holds for a handler that never answers.
    let _silent = requests
        .serve(
            "silent",
            unary_fn(|_r: Request| async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok("late")
            }),
        )
        .await
        .unwrap();
    let e = requests.call("silent", "x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");

    // Code after the config overrides it.
    let coded = requests
        .with_in_flight_limit(InFlightLimit::reject(2))
        .unwrap();
    assert_eq!(coded.in_flight_limit(), Some(InFlightLimit::reject(2)));
}

#[test]
fn the_gateway_block_loads() {
    let config = Config::from_toml(GATEWAY, "gateway.toml").unwrap();
    assert_eq!(config.client.timeout, Some(Duration::from_millis(3000)));
    assert_eq!(config.client.policy.retry.max_attempts, 3);
    assert_eq!(
        config.client.policy.retry.max_backoff,
        Duration::from_millis(2000)
    );
    assert!(matches!(
        config.client.in_flight_limit().map(|l| l.overflow),
        Some(Overflow::Queue { max_waiting: 2048 })
    ));
    assert_eq!(
        config.client.policy_for("plugins.auth.check").on_error,
        OnError::End
    );
    assert_eq!(
        config.client.timeout_for("plugins.auth.check"),
        Some(Duration::from_millis(500))
    );
    // What the endpoint does not set is `[client]`'s.
    assert_eq!(
        config
            .client
            .policy_for("plugins.auth.check")
            .retry
            .max_backoff,
        Duration::from_millis(2000)
    );
}

#[test]
fn the_yaml_gateway_is_the_toml_gateway() {
    let toml = Config::from_toml(GATEWAY, "gateway.toml").unwrap();
    let yaml = Config::from_yaml(GATEWAY_YAML, "gateway.yaml").unwrap();
    assert_eq!(yaml, toml);
    // And a file is read as YAML by its name.
    let file = File::named(GATEWAY_YAML, "yaml");
    assert_eq!(Config::from_file(&file.0).unwrap(), toml);
    let file = File::named(GATEWAY_YAML, "yml");
    assert_eq!(Config::load_from(Some(&file.0), env(&[])).unwrap(), toml);
    // The equality is worth something: the two differ once one does.
    let other = GATEWAY_YAML.replace("timeout_ms: 500", "timeout_ms: 501");
    assert_ne!(Config::from_yaml(&other, "gateway.yaml").unwrap(), toml);
}

/// Each mistake: (file text, the key the error must name, a hint it must give).
#[test]
fn every_mistake_is_a_typed_error_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[client]\nmax_inflight = 5",
            "client.max_inflight",
            "did you mean `max_in_flight`",
        ),
        (
            "[client]\noverflow_policy = \"queue\"",
            "client.overflow_policy",
            "did you mean `overflow`",
        ),
        (
            "[client]\nrequest_timeout_ms = 5",
            "client.request_timeout_ms",
            "did you mean `timeout_ms`",
        ),
        (
            "[client]\nmax_atempts = 3",
            "client.max_atempts",
            "did you mean `max_attempts`",
        ),
        ("servers = \"nats://h\"", "servers", "did you mean `url`"),
        ("[client]\nwhatever = 1", "client.whatever", "known keys"),
        (
            "[server]\nmax_in_fligt = 1",
            "server.max_in_fligt",
            "did you mean `max_in_flight`",
        ),
        (
            "[client.endpoints.x]\ntimout_ms = 5",
            "client.endpoints.\"x\".timout_ms",
            "did you mean `timeout_ms`",
        ),
        (
            "[client.endpoints.x]\nwhatever = 5",
            "client.endpoints.\"x\".whatever",
            "known keys: timeout_ms, max_request_bytes",
        ),
        (
            "[client.endpoints.x]\nmax_in_flight = 5",
            "client.endpoints.\"x\".max_in_flight",
            "not per endpoint",
        ),
        (
            "[client]\nmax_payload = 5",
            "client.max_payload",
            "did you mean `max_request_bytes`",
        ),
        (
            "[client]\nmax_request_bytes = 0",
            "client.max_request_bytes",
            "at least 1",
        ),
        (
            "[client]\ntimeout_ms = 0",
            "client.timeout_ms",
            "at least 1",
        ),
        (
            "[client.endpoints.x]\ntimeout_ms = 0",
            "client.endpoints.\"x\".timeout_ms",
            "at least 1",
        ),
        (
            "[server.endpoints.x]\nmax_in_fligt = 1",
            "server.endpoints.\"x\".max_in_fligt",
            "did you mean `max_in_flight`",
        ),
        (
            "[server.endpoints.x]\ntimeout_ms = 1",
            "server.endpoints.\"x\".timeout_ms",
            "known keys: max_in_flight, max_request_bytes",
        ),
        (
            "[server.endpoints.x]\nmax_in_flight = 0",
            "server.endpoints.\"x\".max_in_flight",
            "at least 1",
        ),
        (
            "[server]\nmax_in_flight = 0",
            "server.max_in_flight",
            "at least 1",
        ),
        ("[server]\nendpoints = 1", "server.endpoints", "table"),
        (
            "[client.endpoints]\nx = 1",
            "client.endpoints.\"x\"",
            "table",
        ),
        (
            "[client]\ntimeout_ms = \"soon\"",
            "client.timeout_ms",
            "whole number",
        ),
        (
            "[client]\ntimeout_ms = -1",
            "client.timeout_ms",
            "whole number",
        ),
        (
            "[client]\nmultiplier = 0.5",
            "client.multiplier",
            "at least 1",
        ),
        (
            "[client]\non_error = \"panic\"",
            "client.on_error",
            "`retry`, `end` or `continue`",
        ),
        (
            "[client]\nmax_in_flight = 4\noverflow = \"drop\"",
            "client.overflow",
            "`reject`, `queue` or `shed`",
        ),
        (
            "[client]\nmax_in_flight = 0",
            "client.max_in_flight",
            "at least 1",
        ),
        (
            "[client]\noverflow = \"queue\"",
            "client.overflow",
            "need client.max_in_flight",
        ),
        ("url = 5", "url", "string"),
        ("client = 1", "client", "table"),
        ("url = ", "", "not valid TOML"),
    ];
    for (text, key, hint) in cases {
        let e = Config::from_toml(text, "plane.toml").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{text}: {e}");
        assert!(e.message().contains("plane.toml"), "names the file: {e}");
        assert!(e.message().contains(key), "{text}: names `{key}`: {e}");
        assert!(e.message().contains(hint), "{text}: says `{hint}`: {e}");
    }
    let e = Config::from_file(std::path::Path::new("/nonexistent/plane.toml")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.message().contains("/nonexistent/plane.toml"), "{e}");
}

#[test]
fn every_environment_mistake_names_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "PLANE_REQUEST_URL",
            "mem://x",
            "did you mean `PLANE_REQUESTS_URL`",
        ),
        (
            "PLANE_CLIENT_TIMEOUT",
            "5",
            "did you mean `PLANE_CLIENT_TIMEOUT_MS`",
        ),
        (
            "PLANE_CLIENT_MAX_INFLIGHT",
            "5",
            "did you mean `PLANE_CLIENT_MAX_IN_FLIGHT`",
        ),
        ("PLANE_SERVER_NOPE_AT_ALL", "5", "plane reads"),
        ("PLANE_CLIENT_TIMEOUT_MS", "soon", "whole number"),
        (
            "PLANE_CLIENT_ON_ERROR",
            "maybe",
            "`retry`, `end` or `continue`",
        ),
        (
            "PLANE_QUEUES_URL",
            "mem://x",
            "did you mean `PLANE_QUEUE_URL`",
        ),
        ("PLANE_CLIENT_TIMEOUT_MS", "0", "at least 1"),
        (
            "PLANE_CLIENT_MAX_REQUEST_BYTE",
            "5",
            "did you mean `PLANE_CLIENT_MAX_REQUEST_BYTES`",
        ),
        (
            "PLANE_CLIENT_ENDPOINT",
            "x = {}",
            "did you mean `PLANE_CLIENT_ENDPOINTS`",
        ),
        (
            "PLANE_SERVER_ENDPOINT",
            "x = {}",
            "did you mean `PLANE_SERVER_ENDPOINTS`",
        ),
        // The endpoint variables hold TOML: bad TOML names the variable
        // and shows what it should hold.
        (
            "PLANE_CLIENT_ENDPOINTS",
            "payments.charge: {timeout_ms: 500}",
            "not valid TOML",
        ),
        (
            "PLANE_CLIENT_ENDPOINTS",
            "\"payments.charge\" = 500",
            "`client.endpoints.\"payments.charge\"` must be a table",
        ),
        (
            "PLANE_CLIENT_ENDPOINTS",
            "\"payments.charge\" = { timeout = 500 }",
            "unknown key `client.endpoints.\"payments.charge\".timeout`; did you mean `timeout_ms`?",
        ),
        (
            "PLANE_CLIENT_ENDPOINTS",
            "\"payments.charge\" = { timeout_ms = \"500\" }",
            "whole number",
        ),
        (
            "PLANE_SERVER_ENDPOINTS",
            "\"upload\" = { max_request_bytes = 0 }",
            "`server.endpoints.\"upload\".max_request_bytes` must be at least 1",
        ),
    ];
    for (name, value, hint) in cases {
        let e = Config::load_from(None, env(&[(name, value)])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{name}: {e}");
        assert!(e.message().contains(name), "{name}: names it: {e}");
        assert!(e.message().contains(hint), "{name}: says `{hint}`: {e}");
    }
}

/// Endpoint tables layer like the rest: each endpoint starts from the
/// fully layered `[client]` (defaults < file < environment), then its own
/// file table, then its own environment, key by key; code over all.
#[tokio::test]
async fn endpoint_tables_layer_defaults_file_environment_code() {
    let file = File::new(
        r#"
        [client]
        timeout_ms = 2000
        max_attempts = 3
        [client.endpoints."payments.charge"]
        on_error = "end"
        [client.endpoints."search"]
        timeout_ms = 100
        [server]
        max_in_flight = 99
        [server.endpoints."images.upload"]
        max_in_flight = 4
        max_request_bytes = 1000
        "#,
    );
    // The file alone: an endpoint's table over `[client]`.
    let f = Config::load_from(Some(&file.0), env(&[])).unwrap();
    let c = &f.client;
    assert_eq!(c.policy_for("payments.charge").on_error, OnError::End);
    assert_eq!(c.policy_for("payments.charge").retry.max_attempts, 3);
    assert_eq!(
        c.timeout_for("payments.charge"),
        Some(Duration::from_millis(2000))
    );
    assert_eq!(c.timeout_for("search"), Some(Duration::from_millis(100)));
    assert_eq!(
        c.timeout_for("elsewhere"),
        Some(Duration::from_millis(2000))
    );
    assert_eq!(f.serve_options_for("images.upload").max_in_flight, 4);
    assert_eq!(
        f.serve_options_for("images.upload").max_request_bytes,
        Some(1000)
    );
    assert_eq!(f.serve_options_for("search").max_in_flight, 99);
    assert_eq!(f.serve_options_for("search").max_request_bytes, None);
    // The defaults under everything the file does not name.
    assert_eq!(
        f.serve_options_for("images.upload").idempotency_max_entries,
        1024
    );

    // The environment: `[client]`'s variables reach endpoints with a table
    // (it sets keys those tables do not), the endpoint variable sets keys
    // over the file's table, and adds endpoints. The order of the
    // variables does not matter.
    let vars = [
        (
            "PLANE_CLIENT_ENDPOINTS",
            "\"payments.charge\" = { timeout_ms = 500 }\n\"new.one\" = { on_error = \"continue\" }",
        ),
        ("PLANE_CLIENT_MAX_ATTEMPTS", "5"),
        ("PLANE_CLIENT_TIMEOUT_MS", "3000"),
        (
            "PLANE_SERVER_ENDPOINTS",
            "[\"images.upload\"]\nmax_request_bytes = 2000",
        ),
        ("PLANE_SERVER_MAX_IN_FLIGHT", "7"),
    ];
    let mut reversed = vars;
    reversed.reverse();
    let layered = Config::load_from(Some(&file.0), env(&vars)).unwrap();
    assert_eq!(
        layered,
        Config::load_from(Some(&file.0), env(&reversed)).unwrap()
    );
    let c = &layered.client;
    let charge = c.policy_for("payments.charge");
    assert_eq!(charge.on_error, OnError::End, "the file's, kept key by key");
    assert_eq!(
        charge.retry.max_attempts, 5,
        "[client]'s variable reaches it"
    );
    assert_eq!(
        c.timeout_for("payments.charge"),
        Some(Duration::from_millis(500)),
        "its own variable beats [client]'s"
    );
    assert_eq!(
        c.timeout_for("search"),
        Some(Duration::from_millis(100)),
        "its own file table beats [client]'s variable"
    );
    assert_eq!(
        c.timeout_for("elsewhere"),
        Some(Duration::from_millis(3000))
    );
    assert_eq!(c.policy_for("new.one").on_error, OnError::Continue);
    assert_eq!(c.policy_for("new.one").retry.max_attempts, 5);
    let upload = layered.serve_options_for("images.upload");
    assert_eq!(
        upload.max_in_flight, 4,
        "the file's table beats [server]'s variable"
    );
    assert_eq!(upload.max_request_bytes, Some(2000));
    assert_eq!(layered.serve_options_for("search").max_in_flight, 7);

    // On a handle, then code over it.
    let requests = plane::registry()
        .requests("mem://config-endpoint-layers")
        .await
        .unwrap();
    let requests = layered.apply(requests).unwrap();
    assert_eq!(
        requests.timeout_for("payments.charge"),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        requests.timeout_for("search"),
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        requests.timeout_for("elsewhere"),
        Some(Duration::from_millis(3000))
    );
    assert_eq!(
        requests.policy_for("payments.charge").on_error,
        OnError::End
    );
    assert_eq!(requests.policy_for("payments.charge").retry.max_attempts, 5);
    let coded = requests
        .with_endpoint_timeout("payments.charge", Some(Duration::from_secs(9)))
        .with_timeout(Some(Duration::from_secs(1)));
    assert_eq!(
        coded.timeout_for("payments.charge"),
        Some(Duration::from_secs(9))
    );
    // `search` set only a timeout: the handle's policy set in code reaches
    // it, since the configuration gave it no policy of its own.
    let coded = coded.with_policy(plane::policy::CallPolicy::end());
    assert_eq!(coded.policy_for("search").on_error, OnError::End);
    assert_eq!(coded.timeout_for("elsewhere"), Some(Duration::from_secs(1)));
}

// Paused time: the clock only moves when every task waits, so which
// deadline fires first does not depend on how loaded the machine is.
#[tokio::test(start_paused = true)]
async fn a_configured_endpoint_timeout_is_that_endpoints_deadline() {
    let config = Config::from_toml(
        r#"
        [client]
        timeout_ms = 5000
        [client.endpoints."quick"]
        timeout_ms = 100
        "#,
        "inline",
    )
    .unwrap();
    let requests = plane::registry()
        .requests("mem://config-endpoint-timeout")
        .await
        .unwrap();
    let requests = config.apply(requests).unwrap();
    let slow = || {
        unary_fn(|_r: Request| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok("done")
        })
    };
    let _quick = requests.serve("quick", slow()).await.unwrap();
    let _patient = requests.serve("patient", slow()).await.unwrap();
    let started = tokio::time::Instant::now();
    let e = requests.call("quick", "x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let reply = requests.call("patient", "x").await.unwrap();
    assert_eq!(reply.to_bytes(), "done");
}

#[tokio::test]
async fn configured_payload_limits_hold_on_both_sides() {
    let config = Config::from_toml(
        r#"
        [client]
        max_request_bytes = 8
        [client.endpoints."bounded"]
        max_request_bytes = 64
        [server.endpoints."bounded"]
        max_request_bytes = 16
        "#,
        "inline",
    )
    .unwrap();
    let requests = plane::registry()
        .requests("mem://config-payload-limits")
        .await
        .unwrap();
    let requests = config.apply(requests).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counting = |runs: Arc<AtomicUsize>| {
        unary_fn(move |_r: Request| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok("done") }
        })
    };
    let _bounded = requests
        .serve_with(
            "bounded",
            counting(runs.clone()),
            config.serve_options_for("bounded"),
        )
        .await
        .unwrap();
    let _small = requests
        .serve_with(
            "small",
            counting(runs.clone()),
            config.serve_options_for("small"),
        )
        .await
        .unwrap();
    // The client's `[client]` limit, before anything is sent.
    requests.call("small", vec![0u8; 8]).await.unwrap();
    let e = requests.call("small", vec![0u8; 9]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The endpoint's client limit lets 17 bytes through; its server's
    // refuses them without running the handler.
    requests.call("bounded", vec![0u8; 16]).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let e = requests.call("bounded", vec![0u8; 17]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the handler did not run");
    // And the client's own limit for the endpoint still holds above it.
    let e = requests.call("bounded", vec![0u8; 65]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert!(e.message().contains("64"), "the client's limit: {e}");
}

/// Each YAML mistake: (text, what the error must say). Keys are named as
/// in TOML.
#[test]
fn yaml_mistakes_are_typed_errors_naming_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "client:\n  max_inflight: 5\n",
            "unknown key `client.max_inflight`; did you mean `max_in_flight`?",
        ),
        (
            "client:\n  endpoints:\n    payments.charge:\n      timout_ms: 5\n",
            "unknown key `client.endpoints.\"payments.charge\".timout_ms`; did you mean `timeout_ms`?",
        ),
        (
            "client:\n  timeout_ms: soon\n",
            "`client.timeout_ms` must be a whole number",
        ),
        ("client:\n  timeout_ms:\n", "`client.timeout_ms` has no value"),
        (
            "server:\n  endpoints:\n    upload:\n      max_request_bytes: ~\n",
            "`server.endpoints.\"upload\".max_request_bytes` has no value",
        ),
        ("client: 5\n", "`client` must be a table"),
        ("- a\n- b\n", "must be a mapping"),
        ("url: a\n---\nurl: b\n", "2 YAML documents"),
        ("client:\n  timeout_ms: [1\n", "not valid YAML"),
        ("url: a\nurl: b\n", "not valid YAML"),
    ];
    for (text, says) in cases {
        let e = Config::from_yaml(text, "plane.yaml").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{text}: {e}");
        assert!(
            e.message().starts_with("plane.yaml: "),
            "names the file: {e}"
        );
        assert!(e.message().contains(says), "{text}: says `{says}`: {e}");
    }
    // An empty file is the defaults, as an empty TOML file is.
    assert_eq!(
        Config::from_yaml("", "plane.yaml").unwrap(),
        Config::default()
    );
}

/// The file and YAML shown in docs/config.md load, and say what the page
/// says they do.
#[test]
fn the_documented_examples_load() {
    let page = include_str!("../../../docs/config.md");
    let block = |fence: &str| {
        let start = page.find(fence).expect("the block") + fence.len();
        &page[start..start + page[start..].find("\n```").expect("its end")]
    };
    let toml = Config::from_toml(block("```toml\n"), "docs/config.md").unwrap();
    assert_eq!(
        toml.client.timeout_for("payments.charge"),
        Some(Duration::from_millis(500))
    );
    assert_eq!(toml.client.max_request_bytes_for("search"), Some(65536));
    assert_eq!(toml.serve_options_for("images.upload").max_in_flight, 8);
    assert_eq!(toml.serve_options_for("search").max_in_flight, 1024);
    let yaml = Config::from_yaml(block("```yaml\n"), "docs/config.md").unwrap();
    assert_eq!(
        yaml.client.policy_for("payments.charge").on_error,
        OnError::End
    );
    assert_eq!(yaml.serve_options_for("images.upload").max_in_flight, 8);
}

#[tokio::test]
async fn client_keys_in_a_url_are_the_policy_of_its_layer() {
    let file = File::new(
        r#"requests = "mem://keys?timeout_ms=250&max_attempts=2&on_error=retry"
url = "mem://every?max_in_flight=8"
"#,
    );
    let c = Config::load_from(Some(&file.0), env(&[])).expect("valid");
    // The backend gets a URL of its own keys only: mem takes none.
    assert_eq!(c.url_for(Plane::Request), "mem://keys");
    assert_eq!(c.url_for(Plane::Events), "mem://every");
    assert_eq!(c.client.timeout, Some(Duration::from_millis(250)));
    assert_eq!(c.client.policy.on_error, OnError::Retry);
    assert_eq!(c.client.policy.retry.max_attempts, 2);
    assert_eq!(c.client.max_in_flight, Some(8));
    let requests = plane::registry()
        .requests(c.url_for(Plane::Request))
        .await
        .expect("the stripped url connects");
    c.apply(requests).expect("policies apply");

    // The environment's [client] is over the file's URL keys, and its own
    // URL's keys are the environment's.
    let c = Config::load_from(Some(&file.0), env(&[("PLANE_CLIENT_TIMEOUT_MS", "400")]))
        .expect("valid");
    assert_eq!(c.client.timeout, Some(Duration::from_millis(400)));
    let c = Config::load_from(
        Some(&file.0),
        env(&[("PLANE_REQUESTS_URL", "mem://env?timeout_ms=100")]),
    )
    .expect("valid");
    assert_eq!(c.client.timeout, Some(Duration::from_millis(100)));
    assert_eq!(c.url_for(Plane::Request), "mem://env");

    // A URL given in code: the rest of it is kept byte for byte.
    let mut c = Config::default();
    let url = c
        .url_keys("nats://h:4222?name=a%20b&timeout_ms=5&servers=x:1#frag")
        .expect("valid");
    assert_eq!(url, "nats://h:4222?name=a%20b&servers=x:1#frag");
    assert_eq!(c.client.timeout, Some(Duration::from_millis(5)));

    // A bad value is refused naming the key and where it was.
    let bad = File::new(r#"requests = "mem://k?timeout_ms=soon""#);
    let e = Config::load_from(Some(&bad.0), env(&[])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(
        e.message().contains("`timeout_ms`") && e.message().contains("`requests` url"),
        "{e}"
    );
    let e = Config::default()
        .url_keys("mem://k?overflow=queue")
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidConfig,
        "overflow needs max_in_flight: {e}"
    );
}

/// The agent SDK's and the DNDM plan's NATS settings, as the example files
/// write them, reach the NATS backend's configuration key by key.
#[test]
fn the_nats_example_files_configure_the_nats_backend() {
    use plane::nats::NatsConfig;
    let nats = |text: &str, origin: &str| {
        let config = Config::from_toml(text, origin).unwrap();
        let url = config.url_for(Plane::Request).parse().expect("a url");
        (config, NatsConfig::from_url(&url).expect("a nats url"))
    };
    let (config, agents) = nats(
        include_str!("../examples/config/agent-sdk.toml"),
        "agent-sdk.toml",
    );
    assert_eq!(agents.reconnect_attempts, Some(60));
    assert_eq!(agents.reconnect_wait, Duration::from_secs(2));
    assert_eq!(agents.ping_interval, Duration::from_secs(20));
    assert_eq!(agents.pings_outstanding, 3);
    assert_eq!(agents.namespace.as_deref(), Some("agents.dev"));
    assert_eq!(config.client.timeout, Some(Duration::from_secs(10)));
    // PLANE_URL plays NATS_URL's part, over the file.
    let mut config = config;
    config
        .apply_env(env(&[("PLANE_URL", "nats://nats-2:4222")]))
        .unwrap();
    assert_eq!(config.url_for(Plane::Events), "nats://nats-2:4222");

    let (_, dndm) = nats(include_str!("../examples/config/dndm.toml"), "dndm.toml");
    assert!(dndm.tls_required);
    assert_eq!(
        dndm.creds.as_deref(),
        Some(std::path::Path::new("/run/secrets/dndm.creds"))
    );
    let plan =
        "nats://user:pass@nats.dndm.internal:4222?tls=true&credentials=/run/secrets/dndm.creds";
    let e = NatsConfig::from_url(&plan.parse().unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    for hint in ["did you mean `tls_required`", "did you mean `creds`"] {
        assert!(e.message().contains(hint), "{hint}: {e}");
    }
}
