//! `herald deadletter list|replay`: inspect the dead-letter stream and redrive chosen events.
//!
//! Replay publishes the original event (headers and data as stored) back to its original subject
//! with `Herald-Replay-For: <namespace/app-id/filter>` naming the one subscription that failed, so
//! only that subscription delivers it again; every other subscription of the same type
//! acknowledges it without delivering. The replay's `Nats-Msg-Id` is `replay:<dead-letter
//! sequence>`, so replaying twice within the duplicate window stores it once. The dead letter is
//! deleted from the dead-letter stream only after the replay was stored (unless `--keep`).

use std::time::Duration;

use herald_core::broker::{Admin, Store, StoredMessage};
use herald_core::delivery::{REPLAY_FOR, dlq_header};
use herald_core::wire::{DEDUP_HEADER, Headers, Message};

use crate::serve::AppError;

#[derive(Debug, clap::Args, Default)]
pub struct DeadletterArgs {
    /// NATS server(s) [default: nats://127.0.0.1:4222]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// NATS credentials file (user JWT and NKey seed) [default: none]
    #[arg(long)]
    pub nats_creds: Option<String>,
    /// Dead-letter stream [default: HERALD_DLQ]
    #[arg(long)]
    pub dlq_stream: Option<String>,
    /// Only dead letters of this app id
    #[arg(long)]
    pub app: Option<String>,
    /// Only dead letters of this event type
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Only dead letters newer than this, e.g. 30m, 2h
    #[arg(long)]
    pub since: Option<String>,
    /// Only these dead-letter sequence numbers (comma-separated)
    #[arg(long)]
    pub seq: Option<String>,
    /// replay: keep the dead letters after replaying them
    #[arg(long)]
    pub keep: bool,
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub seq: u64,
    pub age: Duration,
    pub subscriber: String,
    pub ty: String,
    pub id: String,
    pub status: String,
    pub attempts: String,
    pub reason: String,
    pub message: StoredMessage,
}

fn header(m: &StoredMessage, name: &str) -> String {
    m.headers.get(name).map(str::to_owned).unwrap_or_default()
}

fn decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

/// Which dead letters a command works on.
pub struct Selection {
    pub app: Option<String>,
    pub ty: Option<String>,
    pub since: Option<Duration>,
    pub seqs: Option<Vec<u64>>,
}

impl Selection {
    fn matches(&self, d: &DeadLetter) -> bool {
        let app_of = d.subscriber.split('/').nth(1).unwrap_or("");
        self.app.as_deref().is_none_or(|a| a == app_of)
            && self.ty.as_deref().is_none_or(|t| t == d.ty)
            && self.since.is_none_or(|s| d.age <= s)
            && self.seqs.as_ref().is_none_or(|seqs| seqs.contains(&d.seq))
    }
}

/// Reads the dead letters that match.
pub async fn list(
    admin: &dyn Admin,
    stream: &str,
    sel: &Selection,
) -> Result<Vec<DeadLetter>, AppError> {
    let state = admin
        .stream(stream)
        .await
        .map_err(|e| AppError::Runtime(format!("dead-letter stream `{stream}`: {e}")))?;
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    let now = chrono::Utc::now().timestamp();
    for seq in state.first_sequence..=state.last_sequence {
        let m = match admin.message(stream, seq).await {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => return Err(AppError::Runtime(format!("dead letter {seq}: {e}"))),
        };
        let age = Duration::from_secs(u64::try_from(now - m.time.timestamp()).unwrap_or(0));
        let d = DeadLetter {
            seq,
            age,
            subscriber: header(&m, dlq_header::SUBSCRIBER),
            ty: decode(&header(&m, "ce-type")),
            id: decode(&header(&m, "ce-id")),
            status: header(&m, dlq_header::STATUS),
            attempts: header(&m, dlq_header::ATTEMPTS),
            reason: header(&m, dlq_header::REASON),
            message: m,
        };
        if sel.matches(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

/// The event a dead letter replays: the original headers and data, for its subscription only.
pub fn replay_message(d: &DeadLetter) -> Result<Message, AppError> {
    let subject = header(&d.message, dlq_header::SUBJECT);
    if subject.is_empty() {
        return Err(AppError::Runtime(format!(
            "dead letter {} has no Herald-Dlq-Subject header",
            d.seq
        )));
    }
    let mut headers = Headers::new();
    for (name, value) in d.message.headers.iter() {
        if name.starts_with(dlq_header::PREFIX) || name.eq_ignore_ascii_case(DEDUP_HEADER) {
            continue;
        }
        headers.push(name, value);
    }
    headers.push(REPLAY_FOR, &d.subscriber);
    Ok(Message {
        subject,
        headers,
        payload: d.message.payload.clone(),
        dedup_id: Some(format!("replay:{}", d.seq)),
    })
}

/// Publishes a dead letter back for its subscription; returns once the broker stored it.
pub async fn replay(store: &dyn Store, d: &DeadLetter) -> Result<(), AppError> {
    let failed =
        |e: herald_core::broker::StoreError| AppError::Runtime(format!("replay of {}: {e}", d.seq));
    store
        .send(replay_message(d)?)
        .await
        .map_err(failed)?
        .stored()
        .await
        .map_err(failed)
}

/// Prints dead letters as a table.
pub fn print(list: &[DeadLetter]) {
    if list.is_empty() {
        println!("no dead letters match");
        return;
    }
    println!(
        "{:>6} {:>8} {:<28} {:<24} {:<20} {:>6} {:>8}  REASON",
        "SEQ", "AGE", "SUBSCRIBER", "TYPE", "ID", "STATUS", "ATTEMPTS"
    );
    for d in list {
        println!(
            "{:>6} {:>8} {:<28} {:<24} {:<20} {:>6} {:>8}  {}",
            d.seq,
            human_age(d.age),
            d.subscriber,
            d.ty,
            d.id,
            d.status,
            d.attempts,
            d.reason
        );
    }
}

fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `herald deadletter list|replay`.
pub async fn run(
    command: super::DeadletterCommand,
    env: &dyn herald_core::settings::Env,
) -> Result<(), AppError> {
    use super::DeadletterCommand;
    use herald_core::settings::{Resolver, in_range, parse_creds, parse_stream_name};
    use herald_jetstream::parse_nats_url;
    let (args, replaying) = match command {
        DeadletterCommand::List(a) => (a, false),
        DeadletterCommand::Replay(a) => (a, true),
    };
    let mut r = Resolver::new(env);
    let url = r
        .get("nats-url", &args.nats_url, parse_nats_url)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let creds = r.get("nats-creds", &args.nats_creds, parse_creds);
    let stream = r
        .get("dlq-stream", &args.dlq_stream, parse_stream_name)
        .unwrap_or_else(|| herald_core::policy::DLQ_STREAM.into());
    let since = r.get(
        "since",
        &args.since,
        in_range(herald_core::limits::DEADLETTER_SINCE),
    );
    let seqs = r.get("seq", &args.seq, |v| {
        v.split(',')
            .map(|s| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("`{s}` is not a sequence number"))
            })
            .collect()
    });
    if replaying && args.app.is_none() && args.ty.is_none() && since.is_none() && seqs.is_none() {
        r.fail("replay needs a selection: --seq, --app, --type or --since (to replay everything, say --since 1000d)".into());
    }
    r.finish()?;
    let client = herald_jetstream::connect_once(&url, creds.as_deref())
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    let broker = herald_jetstream::JetStream::new(client, Duration::from_secs(5), "HERALD");
    let sel = Selection {
        app: args.app,
        ty: args.ty,
        since,
        seqs,
    };
    let found = list(&broker, &stream, &sel).await?;
    if !replaying {
        print(&found);
        return Ok(());
    }
    let mut replayed = 0;
    for d in &found {
        replay(&broker, d).await?;
        if !args.keep {
            broker.delete_message(&stream, d.seq).await.map_err(|e| {
                AppError::Runtime(format!("replayed {} but could not delete it: {e}", d.seq))
            })?;
        }
        replayed += 1;
        println!(
            "replayed {} ({} {}) for {}",
            d.seq, d.ty, d.id, d.subscriber
        );
    }
    println!("{replayed} dead letter(s) replayed");
    Ok(())
}
