//! `hostkms`: the operator and script CLI for hostkmsd.
//!
//! Exit codes: 0 success, 1 the daemon refused the request, 2 usage or
//! connection errors.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_proto::{Client, ClientError, StatusInfo};
use clap::{Parser, Subcommand};

/// Talk to the hostkms daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's socket.
    #[arg(long, env = "HOSTKMS_SOCKET", default_value = agent_proto::DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the daemon answers.
    Ping,
    /// Show the daemon's health: versions, uptime, TPM, root key.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostkms: {e}");
            match e {
                ClientError::Daemon { .. } => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}

fn run(cli: &Cli) -> Result<(), ClientError> {
    let mut client = Client::connect(&cli.socket)?;
    match cli.command {
        Command::Ping => {
            client.ping()?;
            if cli.json {
                println!("{{\"ok\":true}}");
            } else {
                println!("pong");
            }
        }
        Command::Status => {
            let status = client.status()?;
            if cli.json {
                println!("{}", serde_json::to_string(&status).unwrap_or_default());
            } else {
                print_status(&status);
            }
        }
    }
    Ok(())
}

fn print_status(status: &StatusInfo) {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!("daemon version:   {}", status.daemon_version);
    println!(
        "protocol:         {} to {}",
        status.oldest_protocol, status.newest_protocol
    );
    println!("uptime:           {} s", status.uptime_secs);
    println!("TPM reachable:    {}", yes_no(status.tpm_reachable));
    println!("root key loaded:  {}", yes_no(status.root_key_loaded));
    println!("root key check:   {}", status.root_key_check);
    for (name, value) in &status.counters {
        println!("{:<17} {value}", format!("{name}:"));
    }
}
