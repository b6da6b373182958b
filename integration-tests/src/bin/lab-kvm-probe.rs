//! Runs inside the lab machine (L1): the `kvm-smoke` checks. See
//! `bulwark_integration_tests::probe::kvm_smoke`.

fn main() -> std::process::ExitCode {
    bulwark_integration_tests::probe::exit_code(bulwark_integration_tests::probe::kvm_smoke::run())
}
