//! `weft-cni`: the CNI plugin binary. Everything lives in the library; this writes its output.

use std::io::Write;

fn main() {
    let env = weft_cni::conf::Env::from_process();
    let outcome = weft_cni::run(&env, &mut std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    // Nothing useful can be done when stdout is gone; the exit code still tells the runtime.
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
