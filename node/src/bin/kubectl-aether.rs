//! `kubectl aether`: see inside a running aether, read-only, from its NATS (docs: README, "See
//! inside: kubectl aether"). A kubectl plugin: on PATH as `kubectl-aether`, run as `kubectl aether`.

use aether_node::config::NatsArgs;
use aether_node::inspect::{Cursor, Inspector, Output, parse_actor, render, render_actors};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// See inside a running aether: where an actor lives, its state, its history, the actors of a
/// kind or a shard. Read-only; connects to the ShardPlan's NATS (its subject prefix) as the
/// `aether-inspect` user or any user with at least its permissions.
#[derive(Debug, Parser)]
#[command(name = "kubectl-aether", version)]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    /// How to print: aligned columns, or one JSON or YAML document for scripts.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    output: Output,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// A completion script for SHELL (bash, zsh, fish, elvish, powershell): e.g.
    /// `source <(kubectl aether completion bash)`, or written as the executable
    /// `kubectl_complete-aether` on PATH for `kubectl aether <TAB>` (kubectl 1.26 and later).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The plan's epoch and members (shards each, the plan each holds), the balance, the moves by
    /// phase with the failed ones' errors, the pods not holding the plan, the event stream's size.
    Status,
    /// The moves of the current plan, each with its latest report; with --watch, again every
    /// second while any is not done.
    Moves {
        /// Print again every second until every move is done.
        #[arg(long)]
        watch: bool,
    },
    /// The shard of KIND/ID, the pod that owns it, the move it is in.
    Where {
        /// The actor, as KIND/ID.
        actor: String,
    },
    /// The actor's state, version, owner, timers and pending sends, from its log.
    Get {
        /// The actor, as KIND/ID.
        actor: String,
    },
    /// The actor's records from its log, and the state after any version.
    History {
        /// The actor, as KIND/ID.
        actor: String,
        /// Only records from this version on.
        #[arg(long, default_value_t = 1)]
        since: u64,
        /// Also the state after this version (folded by the kind's apply: built-in kinds, or an
        /// app kind at a version whose record carries a snapshot).
        #[arg(long)]
        at: Option<u64>,
    },
    /// Actor ids from the event stream (no actor is loaded), of a kind or a shard.
    Actors {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this shard.
        #[arg(long)]
        shard: Option<u32>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The page after this cursor (`SHARD/KIND/ID`: the `next` of the page before).
        #[arg(long)]
        after: Option<Cursor>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubectl-aether: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kubectl-aether: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> aether_node::Result<String> {
    if let What::Completion { shell } = &cli.what {
        use clap::CommandFactory;
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "kubectl-aether", &mut script);
        return Ok(String::from_utf8_lossy(&script).into_owned());
    }
    // A bad KIND/ID is said before NATS is reached.
    if let What::Where { actor } | What::Get { actor } | What::History { actor, .. } = &cli.what {
        parse_actor(actor)?;
    }
    let nats = aether_node::connect::connect_inspector(&cli.nats).await?;
    let inspector = Inspector::open(nats, &cli.nats.prefix).await?;
    let (name, value) = match &cli.what {
        What::Where { actor } => ("where", inspector.where_is(&parse_actor(actor)?).await?),
        What::Get { actor } => ("get", inspector.get(&parse_actor(actor)?).await?),
        What::History { actor, since, at } => (
            "history",
            inspector.history(&parse_actor(actor)?, *since, *at).await?,
        ),
        What::Actors {
            kind,
            shard,
            limit,
            after,
        } => {
            let list = inspector
                .actors(kind.as_deref(), *shard, *limit, after.as_ref())
                .await?;
            return Ok(render_actors(&list, cli.output));
        }
        What::Status => ("status", inspector.status().await?),
        What::Completion { .. } => return Ok(String::new()),
        What::Moves { watch } => {
            let mut moves = inspector.moves().await?;
            while *watch && !all_done(&moves) {
                print!("{}", render("moves", &moves, cli.output));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                moves = inspector.moves().await?;
            }
            ("moves", moves)
        }
    };
    Ok(render(name, &value, cli.output))
}

/// True when every move of the view is done.
fn all_done(moves: &serde_json::Value) -> bool {
    moves["moves"]
        .as_array()
        .is_none_or(|m| m.iter().all(|m| m["phase"] == "Done"))
}
