//! placeholder
use clap::Args;
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {}
pub fn demo(_args: DemoArgs) -> anyhow::Result<()> { anyhow::bail!("demo: not yet") }
