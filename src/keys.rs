//! Key material an operator makes with the `kvs` binary (the only user of rcgen): a local
//! CA with one certificate per node (`kvs certs`), and the Ed25519 key pair client
//! tokens are signed with (`kvs token keypair`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot make the key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// What `kvs certs` wrote, for its summary.
#[derive(Debug)]
pub struct Written {
    pub ca: PathBuf,
    /// Per node: (name, certificate, key).
    pub nodes: Vec<(String, PathBuf, PathBuf)>,
}

/// How long the certificates `kvs certs` makes are valid.
const VALID_DAYS: i64 = 825;

/// Writes `ca.pem` (and `ca-key.pem`) and, per name, `NAME.pem` and `NAME-key.pem` into
/// `dir`. Each node certificate is valid for its name, `localhost`, 127.0.0.1 and ::1
/// (plus `extra_sans`), as a server and as a client (mutual TLS between peers). Keys are
/// written with mode 600; existing files are not overwritten.
pub fn write_certs(
    dir: &Path,
    names: &[String],
    extra_sans: &[String],
) -> Result<Written, KeysError> {
    if names.is_empty() {
        return Err(KeysError::Invalid("--names lists no node".into()));
    }
    for name in names {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(KeysError::Invalid(format!(
                "{name:?} is not a host name (letters, digits, '-' and '.', at most 63)"
            )));
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|source| KeysError::Write { path: dir.to_owned(), source })?;
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(VALID_DAYS);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "kvs local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now;
    ca_params.not_after = until;
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let ca_path = dir.join("ca.pem");
    write_new(&ca_path, &ca.pem(), false)?;
    write_new(&dir.join("ca-key.pem"), &ca_key_pem, true)?;

    let mut nodes = Vec::new();
    for name in names {
        let mut sans = vec![name.clone(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
        sans.extend(extra_sans.iter().cloned());
        sans.dedup();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now;
        params.not_after = until;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        write_new(&cert_path, &cert.pem(), false)?;
        write_new(&key_path, &key.serialize_pem(), true)?;
        nodes.push((name.clone(), cert_path, key_path));
    }
    Ok(Written { ca: ca_path, nodes })
}

/// A fresh Ed25519 key pair for signing client tokens: (private key PEM, public key PEM).
pub fn token_keypair() -> Result<(String, String), KeysError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// Writes `text` to a file that must not exist yet (mode 600 when `secret`).
pub fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), KeysError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let write = |source| KeysError::Write { path: path.to_owned(), source };
    let mut file = options.open(path).map_err(write)?;
    file.write_all(text.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)
}
