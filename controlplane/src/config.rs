//! `herald-controlplane`'s command line. Every flag can also come from `HERALD_<FLAG>` (upper
//! case, `-` to `_`); a flag wins over its variable. Values are parsed by the same [`Resolver`]
//! as the sidecar's, so both binaries report bad settings the same way: all problems on one line,
//! each naming its setting, exit status 64.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald_core::limits::DurationRange;
use herald_core::settings::{ConfigError, Env, Resolver, in_range, parse_addr, parse_stream_name};
use herald_jetstream::parse_nats_url;
use herald_runtime::listeners::{ListenerArgs, ListenerLimits};
use herald_runtime::logging::{LogFormat, parse_log_format};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::webhook::mutate::{InjectorConfig, NatsCredentials};

#[derive(Debug, Parser)]
#[command(
    name = "herald-controlplane",
    version,
    about = "herald's control plane: the admission webhook that injects the herald sidecar, and the stream controller",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a CustomResourceDefinition as YAML (`| kubectl apply -f -`): `eventstreams`
    /// (the default), `subscriptions`, `kyma-subscriptions` (Kyma's v1alpha2 Subscription),
    /// `eventschedules` or `kubernetessources`
    Crd {
        #[arg(default_value = "eventstreams", value_parser = ["eventstreams", "subscriptions", "kyma-subscriptions", "eventschedules", "kubernetessources"])]
        which: String,
    },
}

/// Values stay strings here and are parsed in [`Config::resolve`], so flags and variables share
/// one parser and one error format.
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// HTTPS address of the webhook [default: 0.0.0.0:8443]
    #[arg(long)]
    pub webhook_listen: Option<String>,
    /// PEM certificate chain of the webhook, reloaded when it changes [default: /etc/herald/tls/tls.crt]
    #[arg(long)]
    pub tls_cert_file: Option<String>,
    /// PEM private key of the webhook, reloaded when it changes [default: /etc/herald/tls/tls.key]
    #[arg(long)]
    pub tls_key_file: Option<String>,
    /// Health and metrics address (plain HTTP) [default: 0.0.0.0:9250]
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Once listening, write the bound addresses here as JSON (for port 0) [default: none]
    #[arg(long)]
    pub ports_file: Option<String>,
    /// Image of the injected sidecar (required with the webhook)
    #[arg(long)]
    pub sidecar_image: Option<String>,
    /// NATS server(s) the sidecars connect to, comma-separated (required with the webhook)
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Secret in each app namespace holding a NATS credentials file, `NAME` or `NAME/KEY`
    /// [default key: nats.creds; default: no credentials]
    #[arg(long)]
    pub nats_credentials_secret: Option<String>,
    /// Sidecar as a native sidecar (init container with restartPolicy Always): auto, true, false
    /// [default: auto, detected with a server-side dry run]
    #[arg(long)]
    pub native_sidecar: Option<String>,
    /// Serve the admission webhook: true or false [default: true]
    #[arg(long)]
    pub webhook: Option<String>,
    /// Run the stream controller (one replica at a time, by Lease): true or false [default: false]
    #[arg(long)]
    pub controller: Option<String>,
    /// EventStream whose policy the controller applies [default: default]
    #[arg(long)]
    pub event_stream: Option<String>,
    /// Time between controller passes [default: 15s]
    #[arg(long)]
    pub controller_period: Option<String>,
    /// How long a consumer no workload subscribes to is kept before the controller deletes it
    /// [default: 1h]
    #[arg(long)]
    pub orphan_grace: Option<String>,
    /// Events stream name [default: HERALD]
    #[arg(long)]
    pub stream: Option<String>,
    /// Dead-letter stream name [default: HERALD_DLQ]
    #[arg(long)]
    pub dlq_stream: Option<String>,
    /// NATS credentials file of the controller itself (also --nats-credentials-file, the
    /// spelling of earlier releases) [default: none]
    #[arg(long, alias = "nats-credentials-file")]
    pub nats_creds: Option<String>,
    /// This replica's name, its identity in the controller Lease [default: $HOSTNAME]
    #[arg(long)]
    pub pod_name: Option<String>,
    /// Sidecar CPU request [default: 10m]
    #[arg(long)]
    pub sidecar_cpu_request: Option<String>,
    /// Sidecar CPU limit [default: none]
    #[arg(long)]
    pub sidecar_cpu_limit: Option<String>,
    /// Sidecar memory request [default: 32Mi]
    #[arg(long)]
    pub sidecar_memory_request: Option<String>,
    /// Sidecar memory limit [default: 128Mi]
    #[arg(long)]
    pub sidecar_memory_limit: Option<String>,
    /// Time to finish open requests after SIGTERM [default: 15s]
    #[arg(long)]
    pub shutdown_grace: Option<String>,
    /// Time a client has to send a request head, after the TLS handshake and between requests
    /// (so also how long a keep-alive connection may idle) [default: 30s]
    #[arg(long)]
    pub header_read_timeout: Option<String>,
    /// Time a client has to send a request body once its head arrived [default: 30s]
    #[arg(long)]
    pub body_read_timeout: Option<String>,
    /// Open connections of the webhook; more are closed at once [default: 256]
    #[arg(long)]
    pub webhook_max_connections: Option<String>,
    /// Open connections of the admin API; more are closed at once [default: 128]
    #[arg(long)]
    pub admin_max_connections: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long)]
    pub log_format: Option<String>,
    /// Serve the web console and its API (plain HTTP, for `kubectl port-forward`) on this
    /// address; needs the controller [default: off]
    #[arg(long)]
    pub console_listen: Option<String>,
}

/// Whether the sidecar is a native sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeSidecar {
    /// Ask the apiserver at start (a server-side dry run of a probe pod).
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub webhook: Option<WebhookConfig>,
    pub controller: Option<ControllerSettings>,
    pub admin_listen: SocketAddr,
    /// Where to write the bound addresses ([`herald_runtime::ports`]).
    pub ports_file: Option<std::path::PathBuf>,
    pub shutdown_grace: Duration,
    /// `max_connections` is the webhook's.
    pub listeners: ListenerLimits,
    pub log_format: LogFormat,
    /// The console's address (`--console-listen`), when it is on.
    pub console_listen: Option<SocketAddr>,
}

/// The controller's settings; the Lease namespace is the pod's, known once the Kubernetes
/// client is built.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub nats_url: String,
    pub nats_creds: Option<PathBuf>,
    pub event_stream: String,
    pub stream: String,
    pub dlq_stream: String,
    pub period: Duration,
    pub orphan_grace: Duration,
    pub identity: String,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub native_sidecar: NativeSidecar,
    /// `native_sidecar` is filled in at start (from the flag or the probe).
    pub injector: InjectorConfig,
}

impl Config {
    pub fn resolve(args: &ServeArgs, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut r = Resolver::new(env);
        let webhook_listen = r.get("webhook-listen", &args.webhook_listen, parse_addr);
        let cert_file = r.get("tls-cert-file", &args.tls_cert_file, parse_path);
        let key_file = r.get("tls-key-file", &args.tls_key_file, parse_path);
        let admin_listen = r.get("admin-listen", &args.admin_listen, parse_addr);
        let console_listen = r.get("console-listen", &args.console_listen, parse_addr);
        let ports_file = r.get("ports-file", &args.ports_file, |v| {
            Ok(std::path::PathBuf::from(v))
        });
        let sidecar_image = r.get("sidecar-image", &args.sidecar_image, parse_image);
        let nats_url = r.get("nats-url", &args.nats_url, parse_nats_url);
        let credentials = r.get(
            "nats-credentials-secret",
            &args.nats_credentials_secret,
            parse_secret_ref,
        );
        let native = r.get("native-sidecar", &args.native_sidecar, |v| match v {
            "auto" => Ok(NativeSidecar::Auto),
            "true" => Ok(NativeSidecar::Always),
            "false" => Ok(NativeSidecar::Never),
            _ => Err("must be `auto`, `true` or `false`".into()),
        });
        let webhook = r.get("webhook", &args.webhook, parse_bool).unwrap_or(true);
        let controller_on = r
            .get("controller", &args.controller, parse_bool)
            .unwrap_or(false);
        let mut quantity = |flag: &str, cli: &Option<String>, default: Option<&str>| {
            r.get(flag, cli, parse_quantity)
                .or_else(|| default.map(|d| Quantity(d.to_owned())))
        };
        let cpu_request = quantity(
            "sidecar-cpu-request",
            &args.sidecar_cpu_request,
            Some("10m"),
        );
        let cpu_limit = quantity("sidecar-cpu-limit", &args.sidecar_cpu_limit, None);
        let memory_request = quantity(
            "sidecar-memory-request",
            &args.sidecar_memory_request,
            Some("32Mi"),
        );
        let memory_limit = quantity(
            "sidecar-memory-limit",
            &args.sidecar_memory_limit,
            Some("128Mi"),
        );
        let shutdown_grace = r.get(
            "shutdown-grace",
            &args.shutdown_grace,
            in_range(herald_core::limits::SHUTDOWN_GRACE),
        );
        let listeners = ListenerLimits::resolve(
            &mut r,
            ListenerArgs {
                header_read_timeout: &args.header_read_timeout,
                body_read_timeout: &args.body_read_timeout,
                max_connections: (
                    "webhook-max-connections",
                    &args.webhook_max_connections,
                    crate::limits::DEFAULT_WEBHOOK_MAX_CONNECTIONS,
                ),
                admin_max_connections: &args.admin_max_connections,
            },
        );
        let log_format = r.get("log-format", &args.log_format, parse_log_format);
        let event_stream = r.get("event-stream", &args.event_stream, parse_object_name);
        let period = r.get(
            "controller-period",
            &args.controller_period,
            in_range(CONTROLLER_PERIOD),
        );
        let orphan_grace = r.get("orphan-grace", &args.orphan_grace, in_range(ORPHAN_GRACE));
        let stream = r.get("stream", &args.stream, parse_stream_name);
        let dlq_stream = r.get("dlq-stream", &args.dlq_stream, parse_stream_name);
        let creds_file = r.get_renamed(
            "nats-creds",
            "nats-credentials-file",
            &args.nats_creds,
            parse_path,
        );
        let pod_name = r
            .get("pod-name", &args.pod_name, parse_object_name)
            .or_else(|| env.var("HOSTNAME").filter(|h| !h.is_empty()));
        let controller = if controller_on {
            let url = nats_url.clone().or_else(|| {
                r.fail("--nats-url (HERALD_NATS_URL): required with the controller: the NATS URL of the streams, such as nats://nats.nats:4222".into());
                None
            });
            let identity = pod_name.or_else(|| {
                r.fail("--pod-name (HERALD_POD_NAME): required with the controller when $HOSTNAME is not set: this replica's name in the Lease".into());
                None
            });
            url.zip(identity)
                .map(|(nats_url, identity)| ControllerSettings {
                    nats_url,
                    nats_creds: creds_file,
                    event_stream: event_stream
                        .unwrap_or_else(|| crate::controller::crd::DEFAULT_NAME.into()),
                    stream: stream.unwrap_or_else(|| "HERALD".into()),
                    dlq_stream: dlq_stream.unwrap_or_else(|| "HERALD_DLQ".into()),
                    period: period.unwrap_or(Duration::from_secs(15)),
                    orphan_grace: orphan_grace.unwrap_or(Duration::from_secs(3600)),
                    identity,
                })
        } else {
            None
        };
        if console_listen.is_some() && !controller_on {
            r.fail("--console-listen (HERALD_CONSOLE_LISTEN): the console needs the controller (--controller=true): it reads the streams and dead letters through the controller's NATS connection".into());
        }
        if !webhook && !controller_on {
            r.fail("--webhook and --controller are both false: nothing to run".into());
        }
        let webhook = if webhook {
            let image = sidecar_image.or_else(|| {
                r.fail("--sidecar-image (HERALD_SIDECAR_IMAGE): required with the webhook: the image of the herald sidecar".into());
                None
            });
            let url = nats_url.or_else(|| {
                r.fail("--nats-url (HERALD_NATS_URL): required with the webhook: the NATS URL the sidecars connect to, such as nats://nats.nats:4222".into());
                None
            });
            let pairs = |cpu: Option<Quantity>, memory: Option<Quantity>| {
                [("cpu", cpu), ("memory", memory)]
                    .into_iter()
                    .filter_map(|(k, q)| Some((k.to_owned(), q?)))
                    .collect::<BTreeMap<_, _>>()
            };
            let requests = pairs(cpu_request, memory_request);
            let limits = pairs(cpu_limit, memory_limit);
            image
                .zip(url)
                .map(|(sidecar_image, nats_url)| WebhookConfig {
                    listen: webhook_listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8443))),
                    cert_file: cert_file.unwrap_or_else(|| "/etc/herald/tls/tls.crt".into()),
                    key_file: key_file.unwrap_or_else(|| "/etc/herald/tls/tls.key".into()),
                    native_sidecar: native.unwrap_or(NativeSidecar::Auto),
                    injector: InjectorConfig {
                        sidecar_image,
                        nats_url,
                        native_sidecar: false,
                        resources: ResourceRequirements {
                            requests: (!requests.is_empty()).then_some(requests),
                            limits: (!limits.is_empty()).then_some(limits),
                            ..Default::default()
                        },
                        nats_credentials: credentials,
                    },
                })
        } else {
            None
        };
        r.finish()?;
        Ok(Config {
            webhook,
            controller,
            admin_listen: admin_listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 9250))),
            ports_file,
            shutdown_grace: shutdown_grace.unwrap_or(Duration::from_secs(15)),
            listeners,
            log_format: log_format.unwrap_or(LogFormat::Text),
            console_listen,
        })
    }
}

/// `--controller-period`.
const CONTROLLER_PERIOD: DurationRange =
    DurationRange::new(Duration::from_secs(1), Duration::from_secs(24 * 3600));
/// `--orphan-grace`.
const ORPHAN_GRACE: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(365 * 86_400));

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be `true` or `false`".into()),
    }
}

/// A Kubernetes object name (DNS subdomain).
fn parse_object_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(v.to_owned())
    } else {
        Err("must be a Kubernetes object name (lower-case letters, digits, `-` and `.`)".into())
    }
}

fn parse_path(v: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        Err("must be a file path".into())
    } else {
        Ok(PathBuf::from(v))
    }
}

/// An image reference as the kubelet takes it; only what is surely wrong is refused.
fn parse_image(v: &str) -> Result<String, String> {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must be an image reference such as ghcr.io/org/herald:0.1.0".into())
    } else {
        Ok(v.to_owned())
    }
}

/// `NAME` or `NAME/KEY`: a Secret name is a DNS subdomain, a key is `[-._a-zA-Z0-9]+`.
fn parse_secret_ref(v: &str) -> Result<NatsCredentials, String> {
    let (name, key) = v.split_once('/').unwrap_or((v, "nats.creds"));
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(format!(
            "`{name}` is not a Secret name (lower-case letters, digits, `-` and `.`)"
        ));
    }
    let key_ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !key_ok {
        return Err(format!(
            "`{key}` is not a Secret key (letters, digits, `-`, `.` and `_`)"
        ));
    }
    Ok(NatsCredentials {
        secret: name.to_owned(),
        key: key.to_owned(),
    })
}

/// A Kubernetes resource quantity: a decimal number with an optional suffix (`m`, `k`, `M`, `G`,
/// `Ki`, `Mi`, `Gi`, …, or an exponent `e3`). The apiserver would refuse the pod otherwise, so
/// the injector refuses to start instead.
pub fn parse_quantity(v: &str) -> Result<Quantity, String> {
    let err = || "must be a Kubernetes quantity such as 100m, 64Mi or 1".to_string();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(split);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.starts_with('-') {
        return Err(err());
    }
    let digits_ok = !num.is_empty()
        && num.matches('.').count() <= 1
        && num.bytes().any(|b| b.is_ascii_digit())
        && num.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
        let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
    });
    if digits_ok && suffix_ok {
        Ok(Quantity(v.to_owned()))
    } else {
        Err(err())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_variables() {
        let args = ServeArgs {
            sidecar_image: Some("img:1".into()),
            ..Default::default()
        };
        let c = Config::resolve(
            &args,
            &env(&[
                ("HERALD_NATS_URL", "nats://nats.nats:4222"),
                ("HERALD_SIDECAR_IMAGE", "ignored:0"),
                ("HERALD_NATIVE_SIDECAR", "false"),
                ("HERALD_NATS_CREDENTIALS_SECRET", "nats-user/user.creds"),
            ]),
        )
        .unwrap();
        let w = c.webhook.unwrap();
        assert_eq!(w.injector.sidecar_image, "img:1", "the flag wins");
        assert_eq!(w.injector.nats_url, "nats://nats.nats:4222");
        assert_eq!(w.native_sidecar, NativeSidecar::Never);
        assert_eq!(w.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(w.cert_file, PathBuf::from("/etc/herald/tls/tls.crt"));
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9250");
        let creds = w.injector.nats_credentials.unwrap();
        assert_eq!(
            (creds.secret.as_str(), creds.key.as_str()),
            ("nats-user", "user.creds")
        );
        let res = w.injector.resources;
        assert_eq!(res.requests.unwrap()["memory"], Quantity("32Mi".into()));
        assert_eq!(
            res.limits.as_ref().unwrap()["memory"],
            Quantity("128Mi".into())
        );
        assert!(!res.limits.unwrap().contains_key("cpu"));
    }

    #[test]
    fn every_problem_is_named() {
        let args = ServeArgs {
            webhook_listen: Some("8443".into()),
            native_sidecar: Some("maybe".into()),
            sidecar_memory_limit: Some("lots".into()),
            nats_credentials_secret: Some("Bad_Name".into()),
            ..Default::default()
        };
        let e = Config::resolve(&args, &env(&[])).unwrap_err().to_string();
        for needle in [
            "--webhook-listen=\"8443\": must be an IP address and port",
            "--native-sidecar=\"maybe\": must be `auto`, `true` or `false`",
            "--sidecar-memory-limit=\"lots\": must be a Kubernetes quantity",
            "--nats-credentials-secret=\"Bad_Name\": `Bad_Name` is not a Secret name",
            "--sidecar-image (HERALD_SIDECAR_IMAGE): required with the webhook",
            "--nats-url (HERALD_NATS_URL): required with the webhook",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from {e}");
        }
        let e = Config::resolve(
            &ServeArgs {
                webhook: Some("false".into()),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nothing to run"), "{e}");
        let e = Config::resolve(
            &ServeArgs {
                controller: Some("true".into()),
                ..Default::default()
            },
            &env(&[
                ("HERALD_SIDECAR_IMAGE", "i"),
                ("HERALD_NATS_URL", "nats://n:4222"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--pod-name (HERALD_POD_NAME): required"), "{e}");
        let e = Config::resolve(
            &ServeArgs {
                webhook: Some("false".into()),
                controller: Some("true".into()),
                controller_period: Some("0s".into()),
                stream: Some("a.b".into()),
                ..Default::default()
            },
            &env(&[("HOSTNAME", "herald-0")]),
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "--nats-url (HERALD_NATS_URL): required with the controller",
            "--controller-period",
            "must be from 1s to 24h",
            "--stream",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from {e}");
        }
        let c = Config::resolve(
            &ServeArgs {
                webhook: Some("false".into()),
                controller: Some("true".into()),
                ..Default::default()
            },
            &env(&[
                ("HOSTNAME", "herald-0"),
                ("HERALD_NATS_URL", "nats://n:4222"),
                ("HERALD_ORPHAN_GRACE", "10m"),
            ]),
        )
        .unwrap()
        .controller
        .unwrap();
        assert_eq!(c.identity, "herald-0");
        assert_eq!(c.event_stream, "default");
        assert_eq!(
            (c.stream.as_str(), c.dlq_stream.as_str()),
            ("HERALD", "HERALD_DLQ")
        );
        assert_eq!(c.orphan_grace, Duration::from_secs(600));
        assert_eq!(c.period, Duration::from_secs(15));
        // The credentials file under its earlier name, as a variable; the new one wins.
        let creds = |pairs: &[(&str, &str)]| {
            let mut all = vec![("HOSTNAME", "h"), ("HERALD_NATS_URL", "nats://n:4222")];
            all.extend_from_slice(pairs);
            let args = ServeArgs {
                webhook: Some("false".into()),
                controller: Some("true".into()),
                ..Default::default()
            };
            Config::resolve(&args, &env(&all))
                .unwrap()
                .controller
                .unwrap()
                .nats_creds
        };
        assert_eq!(
            creds(&[("HERALD_NATS_CREDENTIALS_FILE", "/old")]),
            Some("/old".into())
        );
        assert_eq!(
            creds(&[
                ("HERALD_NATS_CREDENTIALS_FILE", "/old"),
                ("HERALD_NATS_CREDS", "/new")
            ]),
            Some("/new".into())
        );
    }

    #[test]
    fn listener_limits_have_ranges() {
        let e = Config::resolve(
            &ServeArgs {
                header_read_timeout: Some("9000000000000000000s".into()),
                webhook_max_connections: Some("0".into()),
                shutdown_grace: Some("1000d".into()),
                ..Default::default()
            },
            &env(&[
                ("HERALD_SIDECAR_IMAGE", "i"),
                ("HERALD_NATS_URL", "nats://n:4222"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "--header-read-timeout=\"9000000000000000000s\": must be from 100ms to 1h",
            "--webhook-max-connections=\"0\": must be a whole number from 1 to 100000",
            "--shutdown-grace=\"1000d\": must be from 0s to 1h",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from {e}");
        }
    }

    #[test]
    fn quantities() {
        for ok in [
            "1", "100m", "0.5", "64Mi", "1Gi", "1e3", "2E-2", "+1", "1.5k",
        ] {
            assert!(parse_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-1", "Mi", "1.2.3", "10mb", "1e", "lots", "1 Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}
