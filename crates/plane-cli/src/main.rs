//! `plane`: the command-line tool (see the crate docs of `plane_cli`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    match plane_cli::run(&args, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == plane::ErrorKind::InvalidArgument => {
            eprintln!("{}", e.message());
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("plane: {e}");
            ExitCode::FAILURE
        }
    }
}
