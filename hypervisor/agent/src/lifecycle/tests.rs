use super::*;
use crate::error::Kind;

const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMHYw\n-----END PUBLIC KEY-----\n";

fn dev(addr: &str, group: u32, members: &[&str], kind: DeviceKind, state: DeviceState) -> Device {
    Device {
        address: addr.into(),
        id: "10de:2330".into(),
        class: "0x030200".into(),
        kind,
        iommu_group: Some(group),
        group_members: members.iter().map(|s| s.to_string()).collect(),
        numa_node: Some(0),
        link: None,
        serial: None,
        driver: Some("vfio-pci".into()),
        present: true,
        state,
        owner_vm: None,
        reason: None,
        last_scrub: (state == DeviceState::Available).then_some(1),
        scrub_in_progress: None,
    }
}

/// Two GPUs: 01:00.0 alone in group 1; 02:00.0 with its audio function 02:00.1 in
/// group 2; all available; tenants a and b.
fn node() -> NodeState {
    let mut st = NodeState::default();
    for d in [
        dev(
            "0000:01:00.0",
            1,
            &[],
            DeviceKind::Gpu,
            DeviceState::Available,
        ),
        dev(
            "0000:02:00.0",
            2,
            &["0000:02:00.1"],
            DeviceKind::Gpu,
            DeviceState::Available,
        ),
        dev(
            "0000:02:00.1",
            2,
            &["0000:02:00.0"],
            DeviceKind::GroupMember,
            DeviceState::Available,
        ),
    ] {
        st.devices.insert(d.address.clone(), d);
    }
    for t in ["a", "b"] {
        create_tenant(
            &mut st,
            Tenant {
                id: t.into(),
                signer_keys: vec![KEY.into()],
                min_version: 0,
            },
        )
        .unwrap();
    }
    st
}

fn req(id: &str, tenant: &str, gpus: GpuRequest) -> CreateVm {
    CreateVm {
        id: id.into(),
        tenant: tenant.into(),
        image: "/img/x.bwi".into(),
        vcpus: 1,
        mem_mib: 64,
        gpus,
        ports: Vec::new(),
        scratch_mib: 0,
    }
}

fn count(n: u32) -> GpuRequest {
    GpuRequest {
        count: Some(n),
        ..Default::default()
    }
}

fn addrs(a: &[&str]) -> GpuRequest {
    GpuRequest {
        addresses: Some(a.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// Runs `f` on a copy and asserts it was refused with `kind` and left the state alone.
fn refused(st: &NodeState, kind: Kind, f: impl FnOnce(&mut NodeState) -> Result<()>) -> Error {
    let mut copy = st.clone();
    let e = f(&mut copy).expect_err("must be refused");
    assert_eq!(e.kind, kind, "{e}");
    e
}

#[test]
fn every_state_event_pair_has_exactly_the_documented_outcome() {
    use DeviceEvent as E;
    use DeviceState as S;
    let legal = [
        (S::Unenrolled, E::Enroll, S::Sanitizing),
        (S::Sanitizing, E::ScrubPassed, S::Available),
        (S::Sanitizing, E::ScrubFailed, S::Quarantined),
        (S::Available, E::Assign, S::Assigned),
        (S::Assigned, E::Unassign, S::Available),
        (S::Assigned, E::Start, S::InUse),
        (S::InUse, E::VmEnded, S::Sanitizing),
        (S::Quarantined, E::OperatorRelease, S::Sanitizing),
        (S::Available, E::Unenroll, S::Unenrolled),
        (S::Quarantined, E::Unenroll, S::Unenrolled),
    ];
    let mut checked = 0;
    for s in S::ALL {
        for e in E::ALL {
            let want = legal
                .iter()
                .find(|(f, ev, _)| *f == s && *ev == e)
                .map(|(_, _, to)| *to);
            assert_eq!(transition(s, e), want, "{s:?} + {e:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 54);
    // No path reaches available except through a passed scrub.
    for s in S::ALL {
        for e in E::ALL {
            if transition(s, e) == Some(S::Available) {
                assert!(
                    e == E::ScrubPassed || (s == S::Assigned && e == E::Unassign),
                    "{s:?} + {e:?}"
                );
            }
        }
    }
}

#[test]
fn illegal_transition_is_a_conflict_naming_the_state() {
    let mut d = dev(
        "0000:01:00.0",
        1,
        &[],
        DeviceKind::Gpu,
        DeviceState::Quarantined,
    );
    let e = apply(&mut d, DeviceEvent::Assign).unwrap_err();
    assert_eq!(e.kind, Kind::Conflict);
    assert!(e.message.contains("quarantined"), "{e}");
    assert_eq!(d.state, DeviceState::Quarantined);
}

#[test]
fn pci_addresses_and_ids_are_validated() {
    assert!(valid_pci_address("0000:01:00.0"));
    assert!(valid_pci_address("abcd:ef:1f.7"));
    for bad in [
        "0000:01:00.8",
        "0000:01:00",
        "0000:01:00.0/",
        "../../../etc",
        "0000:0G:00.0",
        "0000:01:00.00",
        "0000-01:00.0",
        "ABCD:01:00.0",
        "",
    ] {
        assert!(!valid_pci_address(bad), "{bad}");
    }
    assert!(check_id("id", "vm-1_a").is_ok());
    for bad in ["", "-x", "A", "a/b", "a b", &"x".repeat(65)] {
        let e = check_id("id", bad).unwrap_err();
        assert_eq!((e.kind, e.field.as_str()), (Kind::BadRequest, "id"));
    }
}

#[test]
fn create_request_validation_names_the_field() {
    let cases: Vec<(CreateVm, &str)> = vec![
        (
            CreateVm {
                image: "rel/x.bwi".into(),
                ..req("v", "a", count(1))
            },
            "image",
        ),
        (
            CreateVm {
                vcpus: 0,
                ..req("v", "a", count(1))
            },
            "vcpus",
        ),
        (
            CreateVm {
                mem_mib: 3,
                ..req("v", "a", count(1))
            },
            "mem_mib",
        ),
        (
            CreateVm {
                scratch_mib: MAX_SCRATCH_MIB + 1,
                ..req("v", "a", count(1))
            },
            "scratch_mib",
        ),
        (
            req(
                "v",
                "a",
                GpuRequest {
                    count: Some(1),
                    addresses: Some(vec![]),
                    model: None,
                },
            ),
            "gpus",
        ),
        (
            req(
                "v",
                "a",
                GpuRequest {
                    count: Some(1),
                    model: Some("10DE:2330".into()),
                    addresses: None,
                },
            ),
            "gpus.model",
        ),
        (
            req("v", "a", addrs(&["0000:01:00.0", "junk"])),
            "gpus.addresses[1]",
        ),
        (
            req("v", "a", addrs(&["0000:01:00.0", "0000:01:00.0"])),
            "gpus.addresses[1]",
        ),
        (req("v", "a", count(32)), "gpus.count"),
        (req("V!", "a", count(1)), "id"),
    ];
    for (r, field) in cases {
        let e = r.validate().unwrap_err();
        assert_eq!((e.kind, e.field.as_str()), (Kind::BadRequest, field), "{e}");
    }
    req("v", "a", count(1)).validate().unwrap();
    for scratch_mib in [1, MAX_SCRATCH_MIB] {
        CreateVm {
            scratch_mib,
            ..req("v", "a", count(1))
        }
        .validate()
        .unwrap();
    }
}

#[test]
fn create_records_the_scratch_disk_size() {
    let mut st = node();
    let r = CreateVm {
        scratch_mib: 16,
        ..req("v1", "a", GpuRequest::default())
    };
    assert_eq!(create_vm(&mut st, &r, 1).unwrap().scratch_mib, 16);
    assert_eq!(st.vms["v1"].scratch_mib, 16);
}

#[test]
fn create_assigns_whole_groups_and_sets_the_owner() {
    let mut st = node();
    let vm = create_vm(&mut st, &req("v1", "a", addrs(&["0000:02:00.0"])), 1).unwrap();
    assert_eq!(vm.devices, ["0000:02:00.0", "0000:02:00.1"]);
    for a in &vm.devices {
        assert_eq!(st.devices[a].state, DeviceState::Assigned);
        assert_eq!(st.devices[a].owner_vm.as_deref(), Some("v1"));
    }
    assert_eq!(st.devices["0000:01:00.0"].state, DeviceState::Available);
    assert_eq!(st.tenancy.owner.as_deref(), Some("a"));
    assert!(
        invariant_violations(&st).is_empty(),
        "{:?}",
        invariant_violations(&st)
    );
}

#[test]
fn create_by_count_and_model() {
    let mut st = node();
    let vm = create_vm(&mut st, &req("v1", "a", count(2)), 1).unwrap();
    assert_eq!(vm.devices.len(), 3);
    let mut st = node();
    st.devices.get_mut("0000:01:00.0").unwrap().id = "1002:74a1".into();
    let r = req(
        "v1",
        "a",
        GpuRequest {
            count: Some(1),
            model: Some("1002:74a1".into()),
            addresses: None,
        },
    );
    assert_eq!(create_vm(&mut st, &r, 1).unwrap().devices, ["0000:01:00.0"]);
    let r = req(
        "v2",
        "a",
        GpuRequest {
            count: Some(1),
            model: Some("1002:74a1".into()),
            addresses: None,
        },
    );
    let e = refused(&st, Kind::Conflict, |s| create_vm(s, &r, 1).map(drop));
    assert_eq!(e.field, "gpus.count");
}

#[test]
fn a_device_is_never_in_two_vms() {
    let mut st = node();
    create_vm(&mut st, &req("v1", "a", addrs(&["0000:01:00.0"])), 1).unwrap();
    let e = refused(&st, Kind::Conflict, |s| {
        create_vm(s, &req("v2", "a", addrs(&["0000:01:00.0"])), 1).map(drop)
    });
    assert!(e.message.contains("VM v1"), "{e}");
    // Asking for the group's other member only still takes (and finds busy) the group.
    create_vm(&mut st, &req("v3", "a", addrs(&["0000:02:00.1"])), 1).unwrap();
    refused(&st, Kind::Conflict, |s| {
        create_vm(s, &req("v4", "a", addrs(&["0000:02:00.0"])), 1).map(drop)
    });
    refused(&st, Kind::Conflict, |s| {
        create_vm(s, &req("v4", "a", count(1)), 1).map(drop)
    });
    // A VM without GPUs is fine.
    create_vm(&mut st, &req("v5", "a", GpuRequest::default()), 1).unwrap();
    assert!(invariant_violations(&st).is_empty());
}

#[test]
fn a_half_available_group_is_refused() {
    let mut st = node();
    st.devices.get_mut("0000:02:00.1").unwrap().state = DeviceState::Quarantined;
    let e = refused(&st, Kind::Conflict, |s| {
        create_vm(s, &req("v", "a", addrs(&["0000:02:00.0"])), 1).map(drop)
    });
    assert!(
        e.message.contains("0000:02:00.1") && e.message.contains("quarantined"),
        "{e}"
    );
    st.devices.get_mut("0000:02:00.1").unwrap().state = DeviceState::Available;
    st.devices.get_mut("0000:02:00.1").unwrap().present = false;
    refused(&st, Kind::Conflict, |s| {
        create_vm(s, &req("v", "a", addrs(&["0000:02:00.0"])), 1).map(drop)
    });
}

#[test]
fn unknown_tenant_device_or_duplicate_vm() {
    let mut st = node();
    assert_eq!(
        refused(&st, Kind::NotFound, |s| create_vm(
            s,
            &req("v", "zz", count(1)),
            1
        )
        .map(drop))
        .field,
        "tenant"
    );
    assert_eq!(
        refused(&st, Kind::NotFound, |s| create_vm(
            s,
            &req("v", "a", addrs(&["0000:09:00.0"])),
            1
        )
        .map(drop))
        .field,
        "gpus.addresses[0]"
    );
    create_vm(&mut st, &req("v", "a", count(1)), 1).unwrap();
    assert_eq!(
        refused(&st, Kind::Conflict, |s| create_vm(
            s,
            &req("v", "a", count(1)),
            1
        )
        .map(drop))
        .field,
        "id"
    );
}

#[test]
fn second_tenant_waits_for_every_scrub() {
    let mut st = node();
    create_vm(&mut st, &req("v1", "a", addrs(&["0000:01:00.0"])), 1).unwrap();
    // While a's VM exists, b is refused, even for other devices.
    let e = refused(&st, Kind::Conflict, |s| {
        create_vm(s, &req("w", "b", addrs(&["0000:02:00.0"])), 1).map(drop)
    });
    assert_eq!(e.field, "tenant");
    begin_start(&mut st, "v1").unwrap();
    started(&mut st, "v1", 42, "/s").unwrap();
    vm_ended(&mut st, "v1", None).unwrap();
    assert_eq!(st.devices["0000:01:00.0"].state, DeviceState::Sanitizing);
    delete_vm(&mut st, "v1").unwrap();
    // a's VM is gone but its device is not scrubbed yet.
    let e = refused(&st, Kind::Conflict, |s| {
        create_vm(s, &req("w", "b", addrs(&["0000:02:00.0"])), 1).map(drop)
    });
    assert!(e.message.contains("0000:01:00.0"), "{e}");
    // a itself may go on, but not with the device it has not had scrubbed since.
    let e = refused(&st, Kind::Conflict, |s| {
        create_vm(s, &req("v2", "a", addrs(&["0000:01:00.0"])), 1).map(drop)
    });
    assert!(
        e.message
            .contains("is sanitizing: its scrub since the last VM has not passed yet"),
        "{e}"
    );
    let mut st_a = st.clone();
    create_vm(&mut st_a, &req("v2", "a", addrs(&["0000:02:00.0"])), 1).unwrap();
    // A failed scrub keeps b out too.
    let mut q = st.clone();
    scrub_failed(&mut q, "0000:01:00.0", "reset failed").unwrap();
    refused(&q, Kind::Conflict, |s| {
        create_vm(s, &req("w", "b", count(1)), 1).map(drop)
    });
    // After the scrub b gets the node.
    scrub_passed(&mut st, "0000:01:00.0", 7).unwrap();
    create_vm(&mut st, &req("w", "b", addrs(&["0000:01:00.0"])), 1).unwrap();
    assert_eq!(st.tenancy.owner.as_deref(), Some("b"));
    assert_eq!(st.devices["0000:01:00.0"].last_scrub, Some(7));
    assert!(invariant_violations(&st).is_empty());
}

#[test]
fn start_stop_delete_cycle_moves_devices() {
    let mut st = node();
    create_vm(&mut st, &req("v", "a", addrs(&["0000:02:00.0"])), 1).unwrap();
    // Not running: nothing to end.
    refused(&st, Kind::Conflict, |s| vm_ended(s, "v", None));
    begin_start(&mut st, "v").unwrap();
    assert!(st.vms["v"].state == VmState::Starting);
    assert!(st
        .devices
        .values()
        .filter(|d| d.iommu_group == Some(2))
        .all(|d| d.state == DeviceState::InUse));
    refused(&st, Kind::Conflict, |s| begin_start(s, "v").map(drop));
    refused(&st, Kind::Conflict, |s| delete_vm(s, "v").map(drop));
    started(&mut st, "v", 99, "/run/v.sock").unwrap();
    refused(&st, Kind::Conflict, |s| started(s, "v", 1, "/x"));
    assert!(invariant_violations(&st).is_empty());
    vm_ended(&mut st, "v", Some("VMM exited with status 1")).unwrap();
    assert_eq!(st.vms["v"].state, VmState::Failed);
    assert_eq!(
        st.vms["v"].reason.as_deref(),
        Some("VMM exited with status 1")
    );
    assert!(st
        .devices
        .values()
        .filter(|d| d.iommu_group == Some(2))
        .all(|d| d.state == DeviceState::Sanitizing && d.owner_vm.is_none()));
    // Restart needs the scrub first.
    refused(&st, Kind::Conflict, |s| begin_start(s, "v").map(drop));
    scrub_passed(&mut st, "0000:02:00.0", 3).unwrap();
    scrub_passed(&mut st, "0000:02:00.1", 4).unwrap();
    begin_start(&mut st, "v").unwrap();
    assert!(invariant_violations(&st).is_empty());
    vm_ended(&mut st, "v", None).unwrap();
    assert_eq!(st.vms["v"].state, VmState::Stopped);
    delete_vm(&mut st, "v").unwrap();
    assert!(st.vms.is_empty());
    assert_eq!(st.devices["0000:02:00.0"].state, DeviceState::Sanitizing);
    assert!(invariant_violations(&st).is_empty());
}

#[test]
fn deleting_a_never_started_vm_returns_its_devices() {
    let mut st = node();
    create_vm(&mut st, &req("v", "a", count(1)), 1).unwrap();
    delete_vm(&mut st, "v").unwrap();
    assert!(st
        .devices
        .values()
        .all(|d| d.state == DeviceState::Available && d.owner_vm.is_none()));
    assert_eq!(
        refused(&st, Kind::NotFound, |s| delete_vm(s, "v").map(drop)).field,
        "id"
    );
}

#[test]
fn enroll_release_and_scrub_rules() {
    let mut st = NodeState::default();
    let mut d = dev(
        "0000:03:00.0",
        3,
        &["0000:03:00.1"],
        DeviceKind::Gpu,
        DeviceState::Unenrolled,
    );
    d.last_scrub = None;
    st.devices.insert(d.address.clone(), d);
    let member = dev(
        "0000:03:00.1",
        3,
        &["0000:03:00.0"],
        DeviceKind::GroupMember,
        DeviceState::Unenrolled,
    );
    let gpu = st.devices["0000:03:00.0"].clone();
    enroll(&mut st, "0000:03:00.0", &[gpu.clone(), member.clone()]).unwrap();
    assert!(st
        .devices
        .values()
        .all(|d| d.state == DeviceState::Sanitizing));
    assert_eq!(st.devices.len(), 2);
    refused(&st, Kind::Conflict, |s| {
        enroll(s, "0000:03:00.0", std::slice::from_ref(&gpu))
    });
    refused(&st, Kind::NotFound, |s| enroll(s, "0000:07:00.0", &[]));
    refused(&st, Kind::Conflict, |s| operator_release(s, "0000:03:00.0"));
    scrub_failed(&mut st, "0000:03:00.0", "memory not zero").unwrap();
    assert_eq!(
        st.devices["0000:03:00.0"].reason.as_deref(),
        Some("memory not zero")
    );
    refused(&st, Kind::Conflict, |s| scrub_passed(s, "0000:03:00.0", 1));
    operator_release(&mut st, "0000:03:00.0").unwrap();
    assert_eq!(st.devices["0000:03:00.0"].state, DeviceState::Sanitizing);
    scrub_passed(&mut st, "0000:03:00.0", 9).unwrap();
    refused(&st, Kind::Conflict, |s| {
        scrub_failed(s, "0000:03:00.0", "x")
    });
    assert!(invariant_violations(&st).is_empty());
}

#[test]
fn tenants_are_validated_and_not_deleted_with_vms() {
    let mut st = node();
    let t = |id: &str, keys: Vec<String>| Tenant {
        id: id.into(),
        signer_keys: keys,
        min_version: 0,
    };
    assert_eq!(
        refused(&st, Kind::BadRequest, |s| create_tenant(s, t("c", vec![]))).field,
        "signer_keys"
    );
    assert_eq!(
        refused(&st, Kind::BadRequest, |s| create_tenant(
            s,
            t("c", vec!["nope".into()])
        ))
        .field,
        "signer_keys[0]"
    );
    assert_eq!(
        refused(&st, Kind::Conflict, |s| create_tenant(
            s,
            t("a", vec![KEY.into()])
        ))
        .field,
        "id"
    );
    create_vm(&mut st, &req("v", "a", count(1)), 1).unwrap();
    refused(&st, Kind::Conflict, |s| delete_tenant(s, "a"));
    delete_tenant(&mut st, "b").unwrap();
    refused(&st, Kind::NotFound, |s| delete_tenant(s, "b"));
}

#[test]
fn invariant_checker_finds_broken_states() {
    let mut st = node();
    create_vm(&mut st, &req("v", "a", addrs(&["0000:01:00.0"])), 1).unwrap();
    let mut bad = st.clone();
    bad.devices.get_mut("0000:02:00.0").unwrap().owner_vm = Some("v".into());
    assert_eq!(invariant_violations(&bad).len(), 1);
    let mut bad = st.clone();
    bad.devices.get_mut("0000:02:00.0").unwrap().last_scrub = None;
    assert_eq!(invariant_violations(&bad).len(), 1);
    let mut bad = st.clone();
    bad.vms.remove("v");
    assert!(!invariant_violations(&bad).is_empty());
    let mut bad = st;
    bad.tenancy.owner = Some("b".into());
    assert!(!invariant_violations(&bad).is_empty());
}

#[test]
fn ports_are_validated_and_exclusive_across_vms() {
    use crate::model::PortMap;
    let p = |vsock, tcp| PortMap { vsock, tcp };
    for (ports, field) in [
        (vec![p(1024, 8080)], "ports[0].vsock"),
        (vec![p(0, 8080)], "ports[0].vsock"),
        (vec![p(7000, 0)], "ports[0].tcp"),
        (vec![p(7000, 8080), p(7001, 8080)], "ports[1].tcp"),
    ] {
        let r = CreateVm {
            ports,
            ..req("v", "a", GpuRequest::default())
        };
        assert_eq!(r.validate().unwrap_err().field, field);
    }
    let mut st = node();
    let r = CreateVm {
        ports: vec![p(7000, 8080)],
        ..req("v", "a", GpuRequest::default())
    };
    r.validate().unwrap();
    assert_eq!(create_vm(&mut st, &r, 1).unwrap().ports, [p(7000, 8080)]);
    let r2 = CreateVm {
        ports: vec![p(7001, 8080)],
        ..req("w", "a", GpuRequest::default())
    };
    let e = refused(&st, Kind::Conflict, |s| create_vm(s, &r2, 1).map(drop));
    assert_eq!(e.field, "ports[0].tcp");
}

#[test]
fn unenrolment_takes_the_whole_group_back_and_only_when_no_vm_has_it() {
    let mut st = node();
    // One member of group 2 busy: refused, naming it, nothing changed.
    st.devices.get_mut("0000:02:00.1").unwrap().state = DeviceState::Sanitizing;
    let before = st.clone();
    let e = unenroll(&mut st, "0000:02:00.0").unwrap_err();
    assert_eq!(e.kind, Kind::Conflict);
    assert!(
        e.message
            .contains("group member 0000:02:00.1 is sanitizing"),
        "{e}"
    );
    assert_eq!(st, before);
    // Available (and quarantined) members: all of them unenrolled, scrubs forgotten.
    st.devices.get_mut("0000:02:00.1").unwrap().state = DeviceState::Quarantined;
    let members = unenroll(&mut st, "0000:02:00.1").unwrap();
    assert_eq!(members, ["0000:02:00.0", "0000:02:00.1"]);
    for m in &members {
        let d = &st.devices[m];
        assert_eq!(
            (d.state, d.last_scrub),
            (DeviceState::Unenrolled, None),
            "{d:?}"
        );
    }
    assert!(invariant_violations(&st).is_empty());
    // The other group is untouched; asking again (a crash or a sysfs failure cut
    // the first one short) is accepted and changes nothing in the database.
    assert_eq!(st.devices["0000:01:00.0"].state, DeviceState::Available);
    let again = st.clone();
    assert_eq!(unenroll(&mut st, "0000:02:00.0").unwrap(), members);
    assert_eq!(st, again);
    // A VM asking for it hears that the operator gave it back.
    let e = refused(&st, Kind::Conflict, |st| {
        create_vm(st, &req("v", "a", addrs(&["0000:02:00.0"])), 1).map(drop)
    });
    assert!(
        e.message.contains("given back to the host by the operator"),
        "{e}"
    );
    assert_eq!(
        unenroll(&mut st, "0000:09:00.0").unwrap_err().kind,
        Kind::NotFound
    );
}
