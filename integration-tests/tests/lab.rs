//! The lab scenarios, one test each: boots the lab machine (QEMU TCG with KVM, an
//! IOMMU and VFIO devices) and fails with the L1 console log attached when any check
//! fails. The first test to run fetches the kernel and busybox (cached afterwards);
//! runs are serialized, since each L1 is a CPU-bound emulator.
//!
//! A missing prerequisite (no QEMU, no musl target) fails the tests with a message
//! saying what to install; they are never skipped silently.

use std::sync::{Mutex, OnceLock};

use bulwark_integration_tests::lab::{scenario, Lab};

fn run_scenario(name: &str) {
    static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let lab = match LAB.get_or_init(|| Lab::open().map_err(|e| e.to_string())) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab cannot start: {e}"),
    };
    let scenario = scenario::find(name).unwrap_or_else(|e| panic!("{e}"));
    match lab.run(scenario) {
        Ok(run) if run.passed() => eprintln!("{}", run.summary()),
        Ok(run) => panic!("{}", run.failure_report()),
        Err(e) => panic!("lab scenario {name} could not run: {e}"),
    }
}

#[test]
fn kvm_smoke() {
    run_scenario("kvm-smoke");
}

#[test]
fn vfio_edu() {
    run_scenario("vfio-edu");
}

#[test]
fn vfio_msix() {
    run_scenario("vfio-msix");
}

#[test]
fn linux_l2() {
    run_scenario("linux-l2");
}

#[test]
fn vmm_linux() {
    run_scenario("vmm-linux");
}

#[test]
fn vmm_linux_pvh() {
    run_scenario("vmm-linux-pvh");
}

#[test]
fn every_scenario_has_a_test_here() {
    let source = include_str!("lab.rs");
    for s in bulwark_integration_tests::lab::SCENARIOS {
        assert!(
            source.contains(&format!("run_scenario(\"{}\")", s.name)),
            "scenario {} has no test in tests/lab.rs",
            s.name
        );
    }
}
