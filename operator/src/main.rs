//! The operator binary (see issue: operator). Placeholder until the controller lands.

fn main() {
    eprintln!("aether-operator: not implemented yet");
    std::process::exit(2);
}
