//! `bulwark-init`: PID 1 of a Bulwark tenant VM. See `docs/guest-init.md`.

fn main() {
    bulwark_init::run::main()
}
