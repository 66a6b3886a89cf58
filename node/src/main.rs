//! The node sidecar (see issue: node sidecar). Placeholder until the sidecar lands.

fn main() {
    eprintln!("aether-node: not implemented yet");
    std::process::exit(2);
}
