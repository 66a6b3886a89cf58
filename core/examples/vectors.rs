//! Prints the shard-hash test vectors of docs/PROTOCOL.md: `cargo run -p aether-core --example vectors`.

fn main() {
    let long = "x".repeat(300);
    for id in [
        "",
        "a",
        "counter-1",
        "user/42",
        "0123456789abcdef",
        "ünïcödé",
        "🙂 actor",
        long.as_str(),
    ] {
        let shown = if id.len() > 40 {
            format!("\"x\" × {}", id.len())
        } else {
            format!("{id:?}")
        };
        println!(
            "| {shown} | `{:016x}` | {} | {} | {} |",
            aether_core::hash::actor_hash(id),
            aether_core::hash::shard_of(id, 1024),
            aether_core::hash::shard_of(id, 65536),
            {
                let t = aether_core::protocol::encode_id(id);
                if t.len() > 40 {
                    format!("{}…", &t[..16])
                } else {
                    t
                }
            }
        );
    }
}
