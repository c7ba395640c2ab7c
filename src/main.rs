//! The `roomcast` command: `serve` runs the server, `gen-cert` makes a self-signed TLS
//! certificate for local use and tests, `check-config` validates a configuration file, `token`
//! makes a JWT for development.
//!
//! Exit status: 0 after a clean shutdown; 2 when the configuration cannot be used (a bad flag
//! or key, an address that cannot be bound or belongs to another process, an unusable
//! certificate); 1 for any other failure. Errors are printed once, as `roomcast: ` and the
//! chain of causes (each error's message, then its source's), so no cause appears twice.

use anyhow::Context;
use clap::{Parser, Subcommand};
use roomcast::config::ServeArgs;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// A thread-per-core WebSocket push engine for live rooms.
#[derive(Parser, Debug)]
#[command(name = "roomcast", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded defaults; see --help for every setting).
    Serve(Box<ServeArgs>),
    /// Write a self-signed certificate (cert.pem) and key (key.pem) for wss.
    GenCert {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Host names and addresses the certificate is valid for.
        #[arg(long = "host", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])]
        hosts: Vec<String>,
        /// Replace cert.pem and key.pem if they exist.
        #[arg(long)]
        force: bool,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The TOML file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a signed JWT for development: HS256 with --secret, or ES256/RS256/EdDSA with
    /// --key and --alg.
    Token(Box<TokenArgs>),
}

/// `roomcast token` flags.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("signer").required(true).args(["secret", "key"])))]
struct TokenArgs {
    /// HS256 secret (at least 32 bytes), or @path to read it from a file.
    #[arg(long, value_name = "SECRET|@PATH", env = "ROOMCAST_AUTH_HMAC_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// PKCS#8 PEM private key for --alg.
    #[arg(long, value_name = "PEM", requires = "alg")]
    key: Option<PathBuf>,
    /// ES256, RS256 or EdDSA (with --key).
    #[arg(long, value_name = "ALG", requires = "key")]
    alg: Option<String>,
    /// `sub`: the user id.
    #[arg(long)]
    sub: String,
    /// `name`: display name shown in presence.
    #[arg(long)]
    name: Option<String>,
    /// `rooms`: a room pattern (`*`, `live-*`, an exact name); repeatable.
    #[arg(long = "rooms", value_name = "PATTERN")]
    rooms: Vec<String>,
    /// `comment`: may comment and react.
    #[arg(long)]
    comment: bool,
    /// `admin`: operator rights.
    #[arg(long)]
    admin: bool,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// `iss`.
    #[arg(long)]
    iss: Option<String>,
    /// `aud`.
    #[arg(long)]
    aud: Option<String>,
    /// `kid` header (a public key's file name without .pem).
    #[arg(long)]
    kid: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve(args) => match args.into_config() {
            Ok(config) => {
                tracing::debug!(config = ?config.redacted(), "effective configuration");
                match roomcast::runtime::run(config) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e.exit_code(), e.into()),
                }
            }
            Err(e) => fail(CONFIG_ERROR, e.into()),
        },
        Command::GenCert { out, hosts, force } => match gen_cert(&out, &hosts, force) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        },
        Command::Token(args) => match token(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        },
        Command::CheckConfig { config } => {
            let args = ServeArgs { config: Some(config), ..ServeArgs::default() };
            match args.into_config() {
                Ok(config) => match toml::to_string_pretty(&config.redacted()) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(1, e.into()),
                },
                Err(e) => fail(CONFIG_ERROR, e.into()),
            }
        }
    }
}

/// Exit status of an unusable configuration (as clap's for a bad flag).
const CONFIG_ERROR: u8 = 2;

/// Print `roomcast: ` and the error with its causes, each once, and give the exit status.
fn fail(status: u8, error: anyhow::Error) -> ExitCode {
    eprintln!("roomcast: {error:#}");
    ExitCode::from(status)
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    use roomcast::auth::mint::{mint, SigningKey, TokenSpec};
    let key = match (&args.secret, &args.key, &args.alg) {
        (Some(secret), _, _) => {
            let bytes = roomcast::auth::keys::read_secret(secret)?;
            if bytes.len() < roomcast::auth::keys::MIN_HMAC_SECRET_BYTES {
                anyhow::bail!(
                    "the secret must be at least {} bytes (RFC 7518 3.2); the server refuses shorter ones",
                    roomcast::auth::keys::MIN_HMAC_SECRET_BYTES
                );
            }
            SigningKey::hmac(&bytes)
        }
        (None, Some(path), Some(alg)) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            SigningKey::from_pem(alg, &pem)?
        }
        _ => anyhow::bail!("give --secret, or --key with --alg"),
    };
    let spec = TokenSpec {
        sub: args.sub.clone(),
        name: args.name.clone(),
        rooms: args.rooms.clone(),
        comment: args.comment,
        admin: args.admin,
        issuer: args.iss.clone(),
        audience: args.aud.clone(),
        ttl_s: args.ttl,
        kid: args.kid.clone(),
    };
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    println!("{}", mint(&spec, &key, now_s)?);
    Ok(())
}

fn gen_cert(out: &std::path::Path, hosts: &[String], force: bool) -> anyhow::Result<()> {
    let (cert_path, key_path) = (out.join("cert.pem"), out.join("key.pem"));
    // A key is not something to lose by accident: refuse to replace one without --force.
    if let Some(existing) = [&cert_path, &key_path].into_iter().find(|p| p.exists()).filter(|_| !force) {
        anyhow::bail!("{} exists; pass --force to replace it", existing.display());
    }
    let (cert, key) = roomcast::tls::generate_self_signed(hosts)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(&cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, key.as_bytes()).with_context(|| format!("writing {}", key_path.display()))?;
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    println!("serve with: roomcast serve --tls-cert {} --tls-key {}", cert_path.display(), key_path.display());
    Ok(())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // `mode` applies only when the file is created; a replaced key gets 0600 too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}
