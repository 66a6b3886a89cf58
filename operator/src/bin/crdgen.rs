//! Prints the ShardPlan CRD as YAML (`make generate` writes it to `crds/shardplan.yaml`).

fn main() -> std::process::ExitCode {
    match aether_operator::crdgen::render() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
