//! `choreo poison`: list, show, replay and purge poison queues on RabbitMQ.
//!
//! ```text
//! choreo poison list [--prefix P] [--json]
//! choreo poison show <queue> [--limit N] [--json]
//! choreo poison replay <queue> [--id ID]... [--kind K] [--since T] [--dry-run] [--json]
//! choreo poison purge <queue> [--id ID]... [--kind K] [--since T] --yes [--json]
//! ```
//!
//! The broker is `--url`, else `CHOREO_AMQP_URL`, else the local default; `list` also needs
//! the management API (`--management-url`, else `CHOREO_AMQP_MANAGEMENT_URL`, else the
//! broker's host on port 15672). `<queue>` is a poison queue, `<service>.<handler>.poison`,
//! or its handler queue `<service>.<handler>`.
//!
//! Exit codes: 0 when done, 1 when a replay left selected messages behind, 2 for an error
//! (unknown queue, broker down, a bad filter, `purge` without `--yes`), said in one line on
//! standard error.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use choreo::FailureKind;
use choreo::envelope::{Rfc3339, parse_rfc3339};
use choreo_amqp::poison::{
    POISON_SUFFIX, PoisonAdmin, PoisonMessage, PoisonQueue, PurgeReport, ReplayReport, Selection,
};
use choreo_amqp::{AmqpConfig, MANAGEMENT_URL_ENV};
use clap::{Args as ClapArgs, Subcommand};

/// Inspect, replay and purge the messages handlers gave up on.
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// The broker: `amqp://user:password@host:port/vhost`. Default: CHOREO_AMQP_URL, else
    /// amqp://guest:guest@127.0.0.1:5672/%2f.
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// The management API, for `list`. Default: CHOREO_AMQP_MANAGEMENT_URL, else the broker's
    /// host on port 15672 with the broker's credentials.
    #[arg(long, global = true, value_name = "URL")]
    management_url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: PoisonCommand,
}

#[derive(Debug, Subcommand)]
enum PoisonCommand {
    /// List poison queues with their messages counted by failure kind.
    List {
        /// Only queues whose name starts with this, e.g. a service's name.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Show messages of a poison queue without removing them.
    Show {
        /// The poison queue (or its handler queue).
        queue: String,
        /// How many messages to show, from the head of the queue.
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// Send messages back to their handler's queue with their attempt count reset.
    /// Without filters, every message.
    Replay {
        /// The poison queue (or its handler queue).
        queue: String,
        #[command(flatten)]
        filter: Filter,
        /// Move nothing; say what would move.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete messages for good. Without filters, every message.
    Purge {
        /// The poison queue (or its handler queue).
        queue: String,
        #[command(flatten)]
        filter: Filter,
        /// Confirm the deletion: without it, nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

/// Which messages: every filter given must match.
#[derive(Debug, ClapArgs)]
struct Filter {
    /// A message id; repeat for several.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// A failure kind: permanent, retries-exhausted, decode, unknown-version, too-large or
    /// malformed.
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Messages whose last failure is this recent: an RFC 3339 time in UTC
    /// (2026-11-26T05:31:43Z) or a duration ago (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
}

const FAILED: u8 = 1;
const UNUSABLE: u8 = 2;

/// Runs a `poison` command on a runtime of its own.
pub(crate) fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(execute(args)) {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(UNUSABLE)
}

async fn execute(args: Args) -> Result<ExitCode, String> {
    // Refuse before connecting: a purge without `--yes` touches nothing.
    if let PoisonCommand::Purge { yes: false, .. } = &args.command {
        return Err(
            "purge deletes messages for good; add --yes to confirm (see them first with \
             `choreo poison show <queue>`)"
                .to_owned(),
        );
    }
    let selection = match &args.command {
        PoisonCommand::Replay { filter, .. } | PoisonCommand::Purge { filter, .. } => {
            Some(filter.selection()?)
        }
        _ => None,
    };
    let mut config = match &args.url {
        Some(url) => AmqpConfig::new(url.clone()),
        None => AmqpConfig::from_env(),
    };
    let management = args
        .management_url
        .clone()
        .or_else(|| std::env::var(MANAGEMENT_URL_ENV).ok())
        .filter(|url| !url.is_empty());
    if let Some(url) = management {
        config = config.management_url(url);
    }
    let admin = PoisonAdmin::connect(config.connection_name("choreo-cli"))
        .await
        .map_err(|e| e.to_string())?;
    let outcome = command(
        &admin,
        args.command,
        selection.unwrap_or_default(),
        args.json,
    )
    .await;
    admin.close().await;
    outcome
}

async fn command(
    admin: &PoisonAdmin,
    command: PoisonCommand,
    selection: Selection,
    json: bool,
) -> Result<ExitCode, String> {
    match command {
        PoisonCommand::List { prefix } => {
            let queues = admin.list(&prefix).await.map_err(|e| e.to_string())?;
            print(json, &queues, || list_text(&queues, &prefix))
        }
        PoisonCommand::Show { queue, limit } => {
            let queue = poison_queue(queue);
            let messages = admin.show(&queue, limit).await.map_err(|e| e.to_string())?;
            let count = admin.count(&queue).await.map_err(|e| e.to_string())?;
            let shown = Shown {
                queue: &queue,
                count,
                messages: &messages,
            };
            print(json, &shown, || show_text(&shown))
        }
        PoisonCommand::Replay { queue, dry_run, .. } => {
            let queue = poison_queue(queue);
            let report = admin
                .replay(&queue, &selection, dry_run)
                .await
                .map_err(|e| e.to_string())?;
            print(json, &report, || replay_text(&report))?;
            Ok(if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(FAILED)
            })
        }
        PoisonCommand::Purge { queue, .. } => {
            let queue = poison_queue(queue);
            let report = admin
                .purge(&queue, &selection)
                .await
                .map_err(|e| e.to_string())?;
            print(json, &report, || purge_text(&report))
        }
    }
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<ExitCode, String> {
    if json {
        let out = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
        println!("{out}");
    } else {
        print!("{}", text());
    }
    Ok(ExitCode::SUCCESS)
}

/// `billing.charge-card` names the poison queue of that handler.
fn poison_queue(queue: String) -> String {
    if queue.ends_with(POISON_SUFFIX) {
        queue
    } else {
        format!("{queue}{POISON_SUFFIX}")
    }
}

impl Filter {
    fn selection(&self) -> Result<Selection, String> {
        let mut selection = Selection::all();
        for id in &self.ids {
            selection = selection.id(id.trim());
        }
        if let Some(kind) = &self.kind {
            let kind = FailureKind::parse(kind).ok_or_else(|| {
                format!(
                    "unknown failure kind `{kind}`; expected one of permanent, \
                     retries-exhausted, decode, unknown-version, too-large, malformed"
                )
            })?;
            selection = selection.kind(kind);
        }
        if let Some(since) = &self.since {
            selection = selection.since(parse_since(since, SystemTime::now())?);
        }
        Ok(selection)
    }
}

/// An RFC 3339 time in UTC, or a duration before `now`: `90s`, `30m`, `2h`, `7d`.
fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Some(time) = parse_rfc3339(text) {
        return Ok(time);
    }
    let unit = |suffix: char, seconds: u64| {
        let number: u64 = text.strip_suffix(suffix)?.parse().ok()?;
        number.checked_mul(seconds)
    };
    [('s', 1), ('m', 60), ('h', 3600), ('d', 86_400)]
        .into_iter()
        .find_map(|(suffix, seconds)| unit(suffix, seconds))
        .and_then(|seconds| now.checked_sub(Duration::from_secs(seconds)))
        .ok_or_else(|| {
            format!(
                "invalid --since `{text}`: expected an RFC 3339 time in UTC such as \
                 2026-11-26T05:31:43Z, or a duration ago such as 30m, 2h or 7d"
            )
        })
}

fn list_text(queues: &[PoisonQueue], prefix: &str) -> String {
    if queues.is_empty() {
        return if prefix.is_empty() {
            "no poison queues\n".to_owned()
        } else {
            format!("no poison queues starting with `{prefix}`\n")
        };
    }
    let rows: Vec<[String; 3]> = queues
        .iter()
        .map(|q| {
            let mut kinds: Vec<(&String, &u32)> = q.kinds.iter().collect();
            kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let mut text = kinds
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            if q.scanned < q.messages {
                let _ = write!(text, " (in the first {})", q.scanned);
            }
            [q.queue.clone(), q.messages.to_string(), text]
        })
        .collect();
    let total: u64 = queues.iter().map(|q| u64::from(q.messages)).sum();
    let mut out = table(["QUEUE", "MESSAGES", "KINDS"], &rows);
    let _ = writeln!(
        out,
        "{} poison queue{}, {total} message{}",
        queues.len(),
        plural(queues.len() as u64),
        plural(total)
    );
    out
}

/// Columns padded to their widest cell; the second column right-aligned.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i == 1 {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < N {
                    line.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < N {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[derive(serde::Serialize)]
struct Shown<'a> {
    queue: &'a str,
    count: u32,
    messages: &'a [PoisonMessage],
}

fn show_text(shown: &Shown<'_>) -> String {
    let mut out = format!(
        "{}: {} message{}",
        shown.queue,
        shown.count,
        plural(u64::from(shown.count))
    );
    if (shown.messages.len() as u64) < u64::from(shown.count) {
        let _ = write!(out, ", the first {} shown", shown.messages.len());
    }
    out.push('\n');
    let time = |t: Option<SystemTime>| t.map_or_else(|| "-".to_owned(), |t| Rfc3339(t).to_string());
    for m in shown.messages {
        let event = match (&m.event, m.version) {
            (Some(name), Some(version)) => format!("{name} v{version}"),
            (Some(name), None) => name.clone(),
            _ => "-".to_owned(),
        };
        let attempts = m.attempts.map_or_else(
            || "-".to_owned(),
            |n| format!("{n} attempt{}", plural(u64::from(n))),
        );
        let published = match (&m.exchange, &m.routing_key) {
            (Some(exchange), Some(key)) => format!("exchange `{exchange}`, routing key `{key}`"),
            (Some(exchange), None) => format!("exchange `{exchange}`"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(out);
        let _ = writeln!(out, "id           {}", m.id);
        let _ = writeln!(out, "event        {event}");
        let _ = writeln!(out, "kind         {} ({attempts})", m.kind);
        let _ = writeln!(out, "error        {}", m.error.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "last failed  {}", time(m.last_failed_at));
        let _ = writeln!(out, "first failed {}", time(m.first_failed_at));
        let _ = writeln!(out, "published    {published}");
        let _ = writeln!(out, "handler      {}", m.handler);
        if m.replays > 0 {
            let _ = writeln!(out, "replays      {}", m.replays);
        }
        let _ = writeln!(out, "body");
        for line in m.body_text().lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn replay_text(report: &ReplayReport) -> String {
    let count = report.replayed.len() as u64;
    let mut out = if report.dry_run {
        format!(
            "dry run: would replay {count} message{} from {}; nothing moved\n",
            plural(count),
            report.queue
        )
    } else {
        format!(
            "replayed {count} message{} from {}\n",
            plural(count),
            report.queue
        )
    };
    let width = report
        .replayed
        .iter()
        .map(|m| m.kind.len())
        .max()
        .unwrap_or(0);
    for moved in &report.replayed {
        let _ = writeln!(
            out,
            "  {}  {:<width$}  -> {}",
            moved.id, moved.kind, moved.handler
        );
    }
    for failed in &report.failed {
        let _ = writeln!(out, "not replayed {}: {}", failed.id, failed.reason);
    }
    left_line(&mut out, report.left);
    out
}

fn purge_text(report: &PurgeReport) -> String {
    let count = u64::from(report.purged);
    let mut out = format!(
        "purged {count} message{} from {}\n",
        plural(count),
        report.queue
    );
    for id in &report.ids {
        let _ = writeln!(out, "  {id}");
    }
    left_line(&mut out, report.left);
    out
}

/// The closing line of a replay or purge: what is still in the poison queue.
fn left_line(out: &mut String, left: u32) {
    let _ = writeln!(
        out,
        "{left} message{} left in the queue",
        plural(u64::from(left))
    );
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_durations() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_since("2h", now), Ok(now - Duration::from_secs(7200)));
        assert_eq!(
            parse_since("7d", now),
            Ok(now - Duration::from_secs(604_800))
        );
        assert_eq!(
            parse_since("1970-01-01T00:00:10Z", now),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
        );
        for bad in ["yesterday", "2h30m", "-1h", "", "2026-11-26 05:31"] {
            let error = parse_since(bad, now).unwrap_err();
            assert!(error.starts_with("invalid --since"), "{error}");
        }
    }

    #[test]
    fn handler_queues_name_their_poison_queue() {
        assert_eq!(poison_queue("a.b".into()), "a.b.poison");
        assert_eq!(poison_queue("a.b.poison".into()), "a.b.poison");
    }

    #[test]
    fn tables_line_up() {
        let rows = [
            [
                "a.b.poison".to_owned(),
                "3".to_owned(),
                "decode 3".to_owned(),
            ],
            ["c.poison".to_owned(), "12".to_owned(), String::new()],
        ];
        assert_eq!(
            table(["QUEUE", "MESSAGES", "KINDS"], &rows),
            "QUEUE       MESSAGES  KINDS\n\
             a.b.poison         3  decode 3\n\
             c.poison          12\n"
        );
    }
}
