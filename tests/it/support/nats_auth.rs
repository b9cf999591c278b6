//! NATS's own credentials for the cluster tests: private files for NKey
//! seeds and `.creds` files, and decentralized auth (an operator, its
//! system account and an account with JetStream, as signed JWTs) for nodes
//! that accept `.creds` files. The JWTs are built here as `nsc` builds them
//! (ed25519 over `header.claims`, base64url without padding) so the tests
//! need no other tool.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use nkeys::KeyPair;
use serde_json::{json, Value};

/// Writes `contents` to a new file `name` in `dir`, readable by its owner
/// only (0600, as a secret should be); its path.
pub fn private_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("creating a private file");
    file.write_all(contents.as_bytes()).expect("writing it");
    path.to_str().expect("a UTF-8 temp path").to_owned()
}

/// An operator with a system account and one account that may use
/// JetStream, for nodes in operator mode (`resolver: MEMORY`).
pub struct Operator {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
}

impl Operator {
    /// New keys for all three.
    pub fn new() -> Operator {
        Operator {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
        }
    }

    /// The nodes' configuration block that trusts this operator and knows
    /// its two accounts' JWTs.
    pub fn server_config(&self) -> String {
        let op = &self.operator;
        let operator = jwt(
            op,
            &op.public_key(),
            "stevedore-test",
            json!({ "type": "operator", "version": 2, "system_account": self.system.public_key() }),
        );
        let unlimited = json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        });
        let mut with_jetstream = unlimited.clone();
        for limit in ["mem_storage", "disk_storage", "streams", "consumer"] {
            with_jetstream[limit] = json!(-1);
        }
        let account = |key: &KeyPair, name: &str, limits: &Value| {
            let claims = json!({ "type": "account", "version": 2, "limits": limits });
            (key.public_key(), jwt(op, &key.public_key(), name, claims))
        };
        let (system, system_jwt) = account(&self.system, "SYS", &unlimited);
        let (app, app_jwt) = account(&self.account, "APP", &with_jetstream);
        format!(
            "operator: {operator:?}\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {system}: {system_jwt:?}\n  {app}: {app_jwt:?}\n}}\n"
        )
    }

    /// A `.creds` file's text for a new user of the JetStream account (as
    /// `nsc generate creds` writes it).
    pub fn user_creds(&self) -> String {
        let user = KeyPair::new_user();
        let claims = json!({
            "type": "user", "version": 2, "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1,
        });
        let token = jwt(&self.account, &user.public_key(), "broker", claims);
        let seed = user.seed().expect("a user seed");
        format!(
            "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }
}

/// A JWT about `subject` signed by `issuer`, `nats` its NATS claims.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": ulid::Ulid::new().to_string(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).expect("signing a JWT");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}
