//! roomcast load generator (scenarios land with the loadgen issue).

fn main() {
    eprintln!("loadgen: no scenario yet");
}
