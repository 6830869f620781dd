//! NKey authentication against a server configured for it, with the seed
//! read from a file (`nkey_file`), never written in the URL.

use plane_core::request::{unary_fn, Request};
use plane_core::{ErrorKind, Registry};
use plane_nats::testkit::{NatsServer, ServerOptions};

fn registry() -> Registry {
    let mut r = Registry::new();
    plane_nats::register(&mut r);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_users_authenticate_with_a_seed_file() {
    let dir = std::env::temp_dir().join(format!("plane-nats-nkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    std::fs::write(
        dir.join("auth.conf"),
        format!(
            "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
            user.public_key()
        ),
    )
    .expect("server config");
    let seed = dir.join("user.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().expect("seed"))).expect("seed file");
    let strangers_seed = dir.join("stranger.nk");
    std::fs::write(&strangers_seed, stranger.seed().expect("seed")).expect("seed file");
    let canonical = dir.canonicalize().expect("dir");
    let server = NatsServer::start_with(
        ServerOptions::default()
            .mount(&canonical, "/conf")
            .args(["-c", "/conf/auth.conf"]),
    )
    .await
    .expect("nats server with nkey users");

    let url = format!("{}?nkey_file={}", server.url(), seed.display());
    let requests = registry()
        .requests(&url)
        .await
        .expect("the user is admitted");
    let _echo = requests
        .serve(
            "nk_echo",
            unary_fn(|r: Request| async move { Ok(r.message) }),
        )
        .await
        .expect("serve");
    let reply = requests.call("nk_echo", "signed").await.expect("call");
    assert_eq!(reply.to_bytes(), "signed");

    let url = format!("{}?nkey_file={}", server.url(), strangers_seed.display());
    let e = registry().requests(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let e = registry().requests(&server.url()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "no credentials: {e}");
    let _ = std::fs::remove_dir_all(&dir);
}
