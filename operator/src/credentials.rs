//! The NATS credentials a ShardPlan names (`spec.nats.credentialsSecret`): which Secrets the operator
//! may read, and the connection options their keys make. No I/O: the controller reads the Secret.

use crate::error::{Error, Result};
use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The label a Secret carries, with the value `"true"`, for the operator to read it as a
/// ShardPlan's NATS credentials. Without it, whoever may create ShardPlans but not read Secrets
/// could have the operator send any Secret of the namespace to a NATS server of their choosing.
pub const OPT_IN_LABEL: &str = "aether.dev/nats-credentials";

/// Why the operator does not use the credentials Secret `name` of `ns`: the same words whether it
/// does not exist or has not opted in, so a ShardPlan's author learns nothing of other Secrets.
#[must_use]
pub fn not_allowed(name: &str, ns: &str) -> Error {
    Error::Nats(format!(
        "the credentials Secret {name:?} is not in {ns} or lacks the label {OPT_IN_LABEL}=true (the \
         operator reads only Secrets that opt in): create or label it"
    ))
}

/// Connection options from the credentials Secret `s`: one of `user` + `password`, `token`, `nkey`
/// (a seed) or `creds` (a .creds file); with `ca.crt`, TLS verified against that CA (required);
/// with `tls.crt` and `tls.key` too, a client certificate. Refuses a Secret without
/// [`OPT_IN_LABEL`]`=true`.
pub fn options(s: &Secret) -> Result<async_nats::ConnectOptions> {
    let name = s.metadata.name.as_deref().unwrap_or_default();
    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
    let opted_in = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OPT_IN_LABEL))
        .is_some_and(|v| v == "true");
    if !opted_in {
        return Err(not_allowed(name, ns));
    }
    let empty = std::collections::BTreeMap::new();
    let data = s.data.as_ref().unwrap_or(&empty);
    // A value from a file may end with a line end: not part of it (the sidecars do the same).
    let text = |k: &str| {
        data.get(k).map(|v| {
            String::from_utf8_lossy(&v.0)
                .trim_end_matches(['\r', '\n'])
                .to_owned()
        })
    };
    let bytes = |k: &str| data.get(k).map(|v| v.0.as_slice());
    let mut opts = async_nats::ConnectOptions::new();
    if let (Some(u), Some(p)) = (text("user"), text("password")) {
        opts = opts.user_and_password(u, p);
    } else if text("user").is_some() || text("password").is_some() {
        return Err(Error::Nats(format!(
            "Secret {name:?}: the keys user and password go together"
        )));
    } else if let Some(t) = text("token") {
        opts = opts.token(t);
    } else if let Some(seed) = text("nkey") {
        opts = opts.nkey(seed);
    } else if let Some(c) = bytes("creds") {
        // As it is: the .creds format needs the line end after its last line.
        opts = opts
            .credentials(&String::from_utf8_lossy(c))
            .map_err(|e| Error::Nats(format!("Secret {name:?} key creds: {e}")))?;
    } else if bytes("ca.crt").is_none() && bytes("tls.crt").is_none() {
        return Err(Error::Nats(format!(
            "Secret {name:?} has none of the keys user+password, token, nkey, creds or ca.crt"
        )));
    }
    if let Some(ca) = bytes("ca.crt") {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| Error::Nats(format!("Secret {name:?} key ca.crt: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Nats(format!("Secret {name:?} key ca.crt: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Nats(format!(
                "Secret {name:?} key ca.crt holds no PEM certificate"
            )));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Nats(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let config = match (bytes("tls.crt"), bytes("tls.key")) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Nats(format!("Secret {name:?} key tls.crt: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| Error::Nats(format!("Secret {name:?} key tls.key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Nats(format!("Secret {name:?} tls.crt/tls.key: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::Nats(format!(
                    "Secret {name:?}: tls.crt and tls.key go together"
                )));
            }
        };
        opts = opts.tls_client_config(config).require_tls(true);
    } else if bytes("tls.crt").is_some() {
        return Err(Error::Nats(format!(
            "Secret {name:?}: a client certificate (tls.crt) needs the CA that signed the server's (ca.crt)"
        )));
    }
    Ok(opts)
}
