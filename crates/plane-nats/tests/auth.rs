//! Authentication against servers configured for it: NKey users with the
//! seed read from a file (`nkey_file`), never written in the URL; and
//! decentralised (operator-mode) JWT users with a `.creds` file (`creds`),
//! the operator, account and user keys and JWTs made by the test itself.

use nkeys::KeyPair;
use plane_core::request::{unary_fn, Request};
use plane_core::{ErrorKind, Registry};
use plane_nats::testkit::{NatsServer, ServerOptions};
use plane_nats::NatsConfig;

fn registry() -> Registry {
    let mut r = Registry::new();
    plane_nats::register(&mut r);
    r
}

/// Connect with `url`'s credentials, serve an echo at `endpoint` and call it.
async fn admitted_and_served(url: &str, endpoint: &str, body: &'static str) {
    let requests = registry()
        .requests(url)
        .await
        .expect("the user is admitted");
    let _echo = requests
        .serve(
            endpoint,
            unary_fn(|r: Request| async move { Ok(r.message) }),
        )
        .await
        .expect("serve");
    let reply = requests.call(endpoint, body).await.expect("call");
    assert_eq!(reply.to_bytes(), body);
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
    admitted_and_served(&url, "nk_echo", "signed").await;

    let url = format!("{}?nkey_file={}", server.url(), strangers_seed.display());
    let e = registry().requests(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let e = registry().requests(&server.url()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "no credentials: {e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Base64url without padding, the encoding of every part of a NATS JWT.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        // A chunk of k bytes carries k + 1 sextets; the rest would be padding.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A NATS (v2) JWT: `signer` vouches for `subject`, the signature covering
/// the encoded header and claims. The server checks the signature, the
/// issuer's key type and the trust chain, not how `jti` was made (the NATS
/// tools hash the claims), so any unique id does.
fn jwt(signer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
        "iat": iat,
        "iss": signer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let signature = signer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64url(&signature))
}

/// A user JWT for `user`, signed by `account`. Permissions left out allow
/// everything, but a limit left out reads as zero, which the server enforces
/// (no subscriptions, no payload), hence the explicit -1s (unlimited).
fn user_jwt(account: &KeyPair, user: &KeyPair) -> String {
    let nats = serde_json::json!({
        "type": "user", "version": 2,
        "subs": -1, "data": -1, "payload": -1,
    });
    jwt(account, &user.public_key(), "plane-test-user", nats)
}

/// The `.creds` file format the NATS tools write and async-nats parses.
fn creds(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

#[test]
fn base64url_matches_the_rfc_4648_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64url(plain.as_bytes()), encoded, "{plain}");
    }
    // The two characters that differ from standard base64.
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_users_authenticate_with_a_creds_file() {
    let dir = std::env::temp_dir().join(format!("plane-nats-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let operator = KeyPair::new_operator();
    let account = KeyPair::new_account();
    // An account the server has no JWT for: nothing it trusts vouches for
    // the users this one signs.
    let unknown_account = KeyPair::new_account();
    let user = KeyPair::new_user();
    let other_user = KeyPair::new_user();
    let other_seed = other_user.seed().expect("seed");

    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "plane-test-operator",
        serde_json::json!({ "type": "operator", "version": 2 }),
    );
    // As for users, a limit left out is zero: no connections at all. No
    // JetStream limits, so no JetStream, which the request plane does not use.
    let account_nats = serde_json::json!({
        "type": "account", "version": 2,
        "limits": {
            "subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1,
        },
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "plane-test-account",
        account_nats.clone(),
    );
    // The test kit always starts JetStream, which in operator mode will not
    // start without a system account for its internal subscriptions.
    let system = KeyPair::new_account();
    let system_jwt = jwt(&operator, &system.public_key(), "SYS", account_nats);
    std::fs::write(dir.join("operator.jwt"), &operator_jwt).expect("operator jwt");
    std::fs::write(
        dir.join("jwt.conf"),
        format!(
            "operator: /conf/operator.jwt\n\
             system_account: {sys}\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: \"{system_jwt}\"\n  {acc}: \"{account_jwt}\"\n}}\n",
            sys = system.public_key(),
            acc = account.public_key(),
        ),
    )
    .expect("server config");

    let seed = user.seed().expect("seed");
    let good = dir.join("user.creds");
    std::fs::write(&good, creds(&user_jwt(&account, &user), &seed)).expect("creds");
    let unvouched = dir.join("unknown-account.creds");
    std::fs::write(&unvouched, creds(&user_jwt(&unknown_account, &user), &seed)).expect("creds");
    // A valid JWT for `user` with another user's seed: the nonce signature
    // cannot match the key the JWT names.
    let mismatched = dir.join("mismatched.creds");
    std::fs::write(&mismatched, creds(&user_jwt(&account, &user), &other_seed)).expect("creds");
    let garbage = dir.join("garbage.creds");
    std::fs::write(&garbage, "SUNOTASEED-but-secret-all-the-same\n").expect("creds");

    let canonical = dir.canonicalize().expect("dir");
    let server = NatsServer::start_with(
        ServerOptions::default()
            .mount(&canonical, "/conf")
            .args(["-c", "/conf/jwt.conf"]),
    )
    .await
    .expect("nats server in operator mode");

    let url = format!("{}?creds={}", server.url(), good.display());
    // The config holds the path, not what the file says.
    let shown = format!(
        "{:?}",
        NatsConfig::from_url(&url.parse().expect("url")).expect("config")
    );
    assert!(shown.contains(&good.display().to_string()), "{shown}");
    assert!(!shown.contains(&seed), "the seed leaked: {shown}");
    assert!(!shown.contains("eyJ"), "a jwt leaked: {shown}");

    admitted_and_served(&url, "jwt_echo", "vouched").await;

    for (path, why) in [
        (&unvouched, "signed by an unknown account"),
        (&mismatched, "seed does not match the jwt"),
    ] {
        let url = format!("{}?creds={}", server.url(), path.display());
        let e = registry().requests(&url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized, "{why}: {e}");
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains(&seed) && !shown.contains(&other_seed),
            "{why}: a seed leaked: {shown}"
        );
    }
    let e = registry().requests(&server.url()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "no credentials: {e}");

    let missing = dir.join("missing.creds");
    let url = format!("{}?creds={}", server.url(), missing.display());
    let e = registry().requests(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(
        e.message()
            .contains(&format!("creds file `{}`", missing.display())),
        "{e}"
    );
    let url = format!("{}?creds={}", server.url(), garbage.display());
    let e = registry().requests(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(e.message().contains("not a credentials file"), "{e}");
    assert!(!format!("{e} {e:?}").contains("SUNOTASEED"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
