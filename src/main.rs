use clap::Parser;
use kiln::cli::{Cli, Command, RollbackCommand};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            kiln::telemetry::init(args.log_format);
            kiln::run::run(*args).await
        }
        Command::Crds(args) => match args.output_dir {
            Some(dir) => kiln::crdgen::write_dir(&dir),
            None => kiln::crdgen::all_yaml().map(|yaml| print!("{yaml}")),
        },
        Command::Rollback(RollbackCommand::Draft {
            name,
            to_revision,
            namespace,
        }) => kiln::rollback::draft(&name, to_revision, namespace.as_deref()).await,
        Command::Version => {
            println!("kiln {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kiln: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
