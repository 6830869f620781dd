//! `plane::config`: the layering (defaults < file < environment < code),
//! what a loaded configuration does to a request handle, and a typed error
//! naming the key for every mistake (with "did you mean" where it can).

use std::path::PathBuf;
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
        let path = std::env::temp_dir().join(format!("plane-config-{:016x}.toml", rand_u64()));
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
        config.client.endpoints["plugins.auth.check"].on_error,
        OnError::End
    );
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
            "[client.endpoints.x]\ntimeout_ms = 5",
            "client.endpoints.\"x\".timeout_ms",
            "known keys",
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
    ];
    for (name, value, hint) in cases {
        let e = Config::load_from(None, env(&[(name, value)])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{name}: {e}");
        assert!(e.message().contains(name), "{name}: names it: {e}");
        assert!(e.message().contains(hint), "{name}: says `{hint}`: {e}");
    }
}
