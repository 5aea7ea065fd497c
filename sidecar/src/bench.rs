//! `herald bench publish` (stub while the core compiles).
use crate::app::AppError;
use crate::config::Env;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs, _env: &dyn Env) -> Result<(), AppError> {
    Ok(())
}
