//! Logs to stderr: JSON off a terminal (one event a log pipeline can read), compact text
//! for people; and the variables the binary reads outside clap, for the reference.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use ghostwire_backup::progress;

use super::flags::{Global, LogFormat};
use super::reference;

/// The level or filter of the logs: the one setting of ours without a flag.
pub(crate) const LOG_FILTER: reference::EnvOnly = reference::EnvOnly {
    name: "GWB_LOG",
    default: "info",
    help: "What to log: a level (debug, trace…) or a tracing filter such as ghostwire_backup=debug; other libraries log at most debug (the AWS SDK's trace holds the session token)",
};

/// Every variable the binary reads outside clap, for the reference: ours, and the
/// standard ones it honours.
pub(crate) const ENV_ONLY: &[reference::EnvOnly] = &[
    LOG_FILTER,
    reference::EnvOnly {
        name: "NO_COLOR",
        default: "unset",
        help: "Set and not empty: text logs on a terminal without colours (https://no-color.org)",
    },
    reference::EnvOnly {
        name: "HOSTNAME",
        default: "the machine's node name",
        help: "Who holds a lock or the lease, in their records (Kubernetes sets it to the pod's name)",
    },
    reference::EnvOnly {
        name: "KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT",
        default: "set by Kubernetes",
        help: "The API server `run` asks to delete its own pod when another instance takes the lease (with the token under --kube-serviceaccount-dir)",
    },
    reference::EnvOnly {
        name: "AWS_REGION, AWS_DEFAULT_REGION",
        default: "us-east-1",
        help: "The S3 region when --s3-region is not given",
    },
    reference::EnvOnly {
        name: "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_PROFILE…",
        default: "the AWS default chain",
        help: "S3 credentials, read by the AWS SDK's default chain (environment, web identity/IRSA, profile files, container and instance metadata)",
    },
];

/// Sets up logging to stderr and says whether it is JSON.
pub(crate) fn init_logging(global: &Global) -> bool {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_FILTER.name)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match global.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    progress::init(json, global.progress_every);
    // Whatever GWB_LOG asks for: the AWS SDK's trace events print each request's headers
    // (x-amz-security-token, the session token, in the clear), the canonical request and
    // credential responses. Only our own code may log at trace.
    let at_most_debug = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::level_filters::LevelFilter::DEBUG)
        .with_target(
            "ghostwire_backup",
            tracing::level_filters::LevelFilter::TRACE,
        );
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .finish()
            .with(at_most_debug)
            .init();
    } else {
        // For people: no module path (it says nothing to a user), and colours only on a
        // terminal that has not asked for none (https://no-color.org).
        let colours = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
        builder
            .with_writer(|| progress::LogWriter)
            .compact()
            .with_target(false)
            .with_ansi(colours)
            .finish()
            .with(at_most_debug)
            .init();
    }
    json
}
