//! Credentials for the TLS and authentication tests: certificates made with openssl (a CA, a server
//! certificate for 127.0.0.1, a client certificate, and a second CA that signed none of them), an
//! nkey user, and a .creds file with the operator and account JWTs a nats-server in operator mode
//! needs to accept it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Certificates in a temporary directory: `ca.crt`, `server.crt`/`server.key` (for 127.0.0.1 and
/// localhost), `client.crt`/`client.key`, and `other-ca.crt` (a CA that signed none of them).
#[derive(Debug)]
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// Makes them; panics (the test fails) when openssl is missing.
    #[must_use]
    pub fn make() -> Self {
        Self::make_for(&[])
    }

    /// [`Certs::make`] with the server certificate valid for `names` too (besides 127.0.0.1 and
    /// localhost): each an IP address or a DNS name.
    #[must_use]
    pub fn make_for(names: &[&str]) -> Self {
        let san = names.iter().fold(
            "subjectAltName=IP:127.0.0.1,DNS:localhost".to_owned(),
            |s, n| {
                let kind = if n.parse::<std::net::IpAddr>().is_ok() {
                    "IP"
                } else {
                    "DNS"
                };
                format!("{s},{kind}:{n}")
            },
        ) + "\n";
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=aether test {ca}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        for (name, usage, san) in [
            ("server", "serverAuth", san.as_str()),
            ("client", "clientAuth", ""),
        ] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    &format!("/CN=aether test {name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            let ext = d.join(format!("{name}.ext"));
            std::fs::write(&ext, format!("{san}extendedKeyUsage={usage}\n"))
                .unwrap_or_else(|e| panic!("write {}: {e}", ext.display()));
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        }
        Self { dir }
    }

    /// The path of one of the files.
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path of one of the files, as a string (for command lines).
    #[must_use]
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// nats-server arguments for TLS with these certificates; with `verify`, clients must present
    /// a certificate signed by `ca.crt`.
    #[must_use]
    pub fn server_args(&self, verify: bool) -> Vec<String> {
        let mut args = vec![
            "--tls".to_owned(),
            "--tlscert".to_owned(),
            self.arg("server.crt"),
            "--tlskey".to_owned(),
            self.arg("server.key"),
        ];
        if verify {
            args.extend([
                "--tlsverify".to_owned(),
                "--tlscacert".to_owned(),
                self.arg("ca.crt"),
            ]);
        }
        args
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed for the TLS tests (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An nkey user: its seed (what the client holds) and public key (what the server lists).
#[must_use]
pub fn nkey_user() -> (String, String) {
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().unwrap_or_else(|e| panic!("nkey seed: {e}"));
    (seed, kp.public_key())
}

/// A user in operator mode: the server configuration (operator JWT, the account preloaded in a
/// memory resolver, JetStream on for it) and the user's .creds file contents.
#[derive(Debug)]
pub struct Creds {
    /// nats-server configuration text.
    pub server_conf: String,
    /// The .creds file: the user JWT and its nkey seed.
    pub creds: String,
}

/// Makes an operator, an account with JetStream and a user, signed the way `nsc` signs them.
#[must_use]
pub fn operator_mode_creds() -> Creds {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1,
        "consumer": -1,
    });
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "aether-test",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "aether",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "aether-node",
        serde_json::json!({
            "type": "user", "version": 2, "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1,
        }),
    );
    let seed = user.seed().unwrap_or_else(|e| panic!("nkey seed: {e}"));
    Creds {
        server_conf: format!(
            "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {acc}: {account_jwt}\n  {sys}: {system_jwt}\n}}\n",
            acc = account.public_key(),
            sys = system.public_key(),
        ),
        creds: format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    }
}

/// A JWT as NATS reads it: header, claims and an ed25519 signature by `issuer`, base64url.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "jti": format!("{subject}{iat}"),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let sig = issuer
        .sign(signed.as_bytes())
        .unwrap_or_else(|e| panic!("sign: {e}"));
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The shipped per-role NATS configuration (examples/nats/authorization.conf), for subject prefix
/// `prefix`: every `aether` replaced by it, as its header tells a user to do (the users become
/// `{prefix}-operator`, `{prefix}-node`, `{prefix}-client`).
#[must_use]
pub fn roles_conf(prefix: &str) -> String {
    let path = repo().join("examples/nats/authorization.conf");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("aether", prefix)
}

/// The passwords the roles' users get in the tests, as nats-server's environment
/// ([`roles_conf`] reads them from there).
pub const ROLE_PASSWORDS: [(&str, &str); 4] = [
    ("AETHER_OPERATOR_PASSWORD", "operator-secret"),
    ("AETHER_NODE_PASSWORD", "node-secret"),
    ("AETHER_CLIENT_PASSWORD", "client-secret"),
    ("AETHER_INSPECT_PASSWORD", "inspect-secret"),
];

/// A role of [`roles_conf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Writes the plan; reads progress and node events.
    Operator,
    /// A node sidecar.
    Node,
    /// Sends requests only.
    Client,
    /// `kubectl aether`: reads the plan and the event stream.
    Inspect,
}

impl Role {
    /// The user name and password of this role for `prefix`.
    #[must_use]
    pub fn user(self, prefix: &str) -> (String, String) {
        let (name, i) = match self {
            Self::Operator => ("operator", 0),
            Self::Node => ("node", 1),
            Self::Client => ("client", 2),
            Self::Inspect => ("inspect", 3),
        };
        (format!("{prefix}-{name}"), ROLE_PASSWORDS[i].1.to_owned())
    }

    /// The inbox prefix this role connects with (its users may read only their own inboxes).
    #[must_use]
    pub fn inbox(self, prefix: &str) -> String {
        let names = aether_core::protocol::Names::new(prefix);
        match self {
            Self::Operator => names.operator_inbox(),
            Self::Node => names.node_inbox(),
            Self::Client => "_INBOX".to_owned(),
            Self::Inspect => names.inspect_inbox(),
        }
    }
}

/// The repository's root.
#[must_use]
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
