//! Embedding PromGuard in another tool, with the library crates only: a
//! monitor and two nodes on this machine (the local provider, as root),
//! converged, every target verified up over WireGuard, then torn down.
//! Progress is printed from the libraries' events; Ctrl-C cancels.
//!
//! `cargo run -p promguard-cli --example embed` (`cargo xtask test` runs it).

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_cloud::{provision, CloudProvider};
use promguard_core::{config::Config, planner, Event, Journal, MemoryStore, Observer};
use promguard_core::{SshPublicKey, State};
use promguard_remote::fleet::{Access, CancellationToken, Fleet};

/// Prints what the libraries report.
struct Print;

impl Observer for Print {
    fn on_event(&self, event: &Event) {
        match event {
            Event::Step { host, step } => println!("{host}: {step}"),
            Event::Finished { host, outcome } => println!("{host}: {outcome}"),
            other => println!("{other:?}"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let toml = "[deployment]\nname = \"embed\"\nprovider = \"local\"\n[nodes]\ncount = 2\n";
    let config = Config::from_toml(toml, Path::new("embed.toml"))?;
    let provider = Arc::new(LocalProvider::new(
        config.deployment.clone(),
        LocalOptions::default(),
    ));
    // A login key of our own; PromGuard never reads the private half.
    let keys = tempfile::tempdir()?;
    let identity = keys.path().join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&identity)
        .status()?;
    assert!(made.success(), "ssh-keygen failed");
    let login = SshPublicKey::parse(&std::fs::read_to_string(identity.with_extension("pub"))?)?;

    // Ctrl-C cancels between state saves; the state stays in memory here.
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_ctrl_c.cancel();
    });
    let empty = State::new(config.deployment.clone());
    let journal = Arc::new(Journal::new(Arc::new(MemoryStore::default()), empty));
    let dialer = Arc::clone(&provider);
    let access = Access {
        identity: identity.into(),
        default_port: config.ssh.port,
        connector: Arc::new(move |addr| dialer.connect(addr)),
    };
    let fleet = Fleet {
        observer: Arc::new(Print),
        cancel: cancel.clone(),
        ..Fleet::new(access, Arc::clone(&journal), provider.capabilities())
    };

    let result = async {
        let plan = planner::plan(&config, None)?;
        provision::provision(&*provider, &plan, &journal, Some(&login), &Print, &cancel).await?;
        // Planned again now that the hosts' public addresses are known.
        let plan = planner::plan(&config, Some(&journal.snapshot()))?;
        let mut converged = fleet.converge(&plan).await?;
        let verified = fleet
            .verify(&plan, &mut converged, Duration::from_secs(120))
            .await?;
        for t in &verified.targets {
            println!("target {} {} {}", t.instance, t.scrape_url, t.health);
        }
        Ok::<_, Box<dyn Error>>(())
    }
    .await;
    provider.destroy_deployment().await?;
    println!("deployment {} torn down", config.deployment);
    result
}
