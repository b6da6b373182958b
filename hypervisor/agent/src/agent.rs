//! The agent: every operation of the API, each one database transaction around a
//! pure `lifecycle` function, plus the work that happens outside the database
//! (sysfs writes, scrubs, VMM processes) and recovery after a restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, JailConfig};
use crate::crash;
use crate::db::{Store, Txn};
use crate::error::{Error, Kind, Result};
use crate::inventory::Sysfs;
use crate::lifecycle::{self, CreateVm};
use crate::metrics::Metrics;
use crate::model::{
    now_ms, DeviceKind, DeviceState, JailRecord, NodeState, ScrubOutcome, ScrubRecord, ScrubStep,
    Tenant, Vm, VmState,
};
use crate::sanitize::{Sanitizer, Step};
use crate::vmm::{self, VmPaths};

/// One lifecycle change, for `GET /events`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    /// `device`, `vm`, `tenant`.
    pub object: String,
    pub id: String,
    pub what: String,
}

#[derive(Debug, Default)]
struct EventLog {
    next: u64,
    items: VecDeque<Event>,
}

const EVENTS_KEPT: usize = 1000;

#[derive(Debug)]
struct VmmEntry {
    pidfd: OwnedFd,
    stop_requested: bool,
}

/// Work running on blocking threads that may outlive the request that started it (a
/// driver change or scrub step given up on after its timeout), by key: marked when it
/// starts, unmarked by its thread when it returns, however late.
#[derive(Debug, Default)]
struct Outstanding(Arc<Mutex<HashMap<String, Instant>>>);

/// Unmarks its keys when dropped: moved into the blocking closure, so that it drops
/// when the work returns or panics.
struct OutstandingMark(Arc<Mutex<HashMap<String, Instant>>>, Vec<String>);

impl Drop for OutstandingMark {
    fn drop(&mut self) {
        let mut m = lock(&self.0);
        for k in &self.1 {
            m.remove(k);
        }
    }
}

impl Outstanding {
    /// Marks `keys` as running from now on.
    fn mark(&self, keys: Vec<String>) -> OutstandingMark {
        let now = Instant::now();
        let mut m = lock(&self.0);
        for k in &keys {
            m.insert(k.clone(), now);
        }
        OutstandingMark(Arc::clone(&self.0), keys)
    }

    /// The first of `keys` with work still running, and since when.
    fn since(&self, keys: &[String]) -> Option<(String, Instant)> {
        let m = lock(&self.0);
        keys.iter().find_map(|k| m.get(k).map(|t| (k.clone(), *t)))
    }
}

/// What a driver change is serialised on: the device's IOMMU group (the unit that
/// moves between drivers), or the address of a device without one.
fn driver_change_key(addr: &str, group: Option<u32>) -> String {
    group.map_or_else(|| addr.to_string(), |g| format!("IOMMU group {g}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// bulwarkd's end of one VM's guest channel: what the guest reported, the task
/// serving it, and the queue of bulwarkd's requests to it.
#[derive(Debug)]
struct GuestLink {
    view: crate::guest::Shared,
    task: Option<tokio::task::AbortHandle>,
    requests: Option<tokio::sync::mpsc::Sender<crate::guest::HostRequest>>,
}

/// The node agent.
#[derive(Debug)]
pub struct Agent {
    pub cfg: Config,
    pub state_dir: PathBuf,
    pub store: Arc<Store>,
    pub sysfs: Sysfs,
    sanitizer: Arc<dyn Sanitizer>,
    pub metrics: Metrics,
    scrubbing: Mutex<HashSet<String>>,
    /// Per PCI bus and per IOMMU group: both held for a whole scrub, so that the
    /// devices of one bus (one hot-reset domain: a reset opens every group on it)
    /// and the members of one group (a group opens once) are scrubbed one after
    /// another.
    scrub_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    enroll_lock: tokio::sync::Mutex<()>,
    /// The groups whose driver change (enrolment, unenrolment) the kernel has not
    /// finished: marked before the sysfs writes, cleared by the thread that made them
    /// when they return, however late.
    driver_changes: Outstanding,
    /// The PCI buses and IOMMU groups (the scrub lock keys) of scrub steps still
    /// running on their blocking thread: a step that outlives its timeout keeps its
    /// device's VFIO group open (and the hardware may be wedged) until it returns.
    scrub_steps: Outstanding,
    vmms: Mutex<HashMap<String, VmmEntry>>,
    events: Mutex<EventLog>,
    /// The newest event's sequence number, for requests that wait for the next one.
    event_seq: tokio::sync::watch::Sender<u64>,
    /// The node's evidence producer, made at the first evidence request (a TPM's AK
    /// is enrolled then); `None` until then.
    attester: tokio::sync::Mutex<Option<bulwark_tpm::attester::Attester>>,
    /// The node image evidence states (`attestation.node_image`), or why it could
    /// not be determined at start (then attestation is refused with that reason);
    /// `None` without `attestation`.
    node_image: Option<std::result::Result<crate::config::NodeImage, String>>,
    /// Per VM: what its guest reported on the host channel, and the channel's task.
    guests: Mutex<HashMap<String, GuestLink>>,
    /// One node image update at a time.
    node_update_lock: tokio::sync::Mutex<()>,
    /// Per VM: the tasks serving its exposed ports.
    port_tasks: Mutex<HashMap<String, Vec<tokio::task::AbortHandle>>>,
}

impl Agent {
    /// Opens the state in `state_dir` (created if needed).
    pub fn open(state_dir: &Path, cfg: Config) -> Result<Arc<Agent>> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            Error::internal(
                "state_dir",
                format!("creating {}: {e}", state_dir.display()),
            )
        })?;
        let store = Store::open(&state_dir.join("bulwarkd.db"))?;
        let sanitizer = crate::sanitize::from_config(&cfg.sanitizer, &cfg.sysfs_root);
        let node_image = resolve_node_image(&cfg);
        Ok(Arc::new(Agent {
            sysfs: Sysfs::new(&cfg.sysfs_root),
            cfg,
            state_dir: state_dir.to_path_buf(),
            store: Arc::new(store),
            sanitizer,
            metrics: Metrics::default(),
            scrubbing: Mutex::default(),
            scrub_locks: Mutex::default(),
            enroll_lock: tokio::sync::Mutex::new(()),
            driver_changes: Outstanding::default(),
            scrub_steps: Outstanding::default(),
            vmms: Mutex::default(),
            events: Mutex::default(),
            event_seq: tokio::sync::watch::Sender::new(0),
            attester: tokio::sync::Mutex::new(None),
            node_image,
            guests: Mutex::default(),
            node_update_lock: tokio::sync::Mutex::default(),
            port_tasks: Mutex::default(),
        }))
    }

    /// Runs `f` in one write transaction on a blocking thread.
    pub async fn txn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Txn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.update(f))
            .await
            .map_err(|e| Error::internal("storage", format!("transaction thread: {e}")))?
    }

    /// A snapshot of the state.
    pub async fn state(&self) -> Result<NodeState> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| Error::internal("storage", format!("read thread: {e}")))?
    }

    fn event(&self, object: &str, id: &str, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(object, id, what = %what, "lifecycle");
        let mut log = lock(&self.events);
        log.next += 1;
        let e = Event {
            seq: log.next,
            at_ms: now_ms(),
            object: object.into(),
            id: id.into(),
            what,
        };
        log.items.push_back(e);
        while log.items.len() > EVENTS_KEPT {
            log.items.pop_front();
        }
        let seq = log.next;
        drop(log);
        self.event_seq.send_replace(seq);
    }

    /// Events after `since`; when there are none yet, waits up to `wait` for the
    /// next (a blocking query, as Nomad's and Consul's `?index=&wait=`): a client
    /// that follows the stream asks again with the last seq it saw.
    pub async fn wait_events(&self, since: u64, wait: Duration) -> Vec<Event> {
        // Subscribed before the log is read: an event between the read and the
        // wait still wakes it.
        let mut seq = self.event_seq.subscribe();
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(wait).unwrap_or(now);
        loop {
            let found = self.events(since);
            if !found.is_empty() || wait.is_zero() {
                return found;
            }
            match tokio::time::timeout_at(deadline, seq.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the agent is going away): nothing new.
                _ => return Vec::new(),
            }
        }
    }

    /// Events after `since` (the event stream is polled with the last seq seen).
    /// Sequence numbers restart with bulwarkd: a `since` beyond the newest event is
    /// a client of an earlier run, and gets every event of this one.
    pub fn events(&self, since: u64) -> Vec<Event> {
        let log = lock(&self.events);
        let since = if since > log.next { 0 } else { since };
        log.items
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }

    // ----- inventory -----

    /// Scans sysfs and merges what it finds: new devices enter unenrolled, known
    /// ones get their hardware fields refreshed (never their state), missing ones are
    /// marked not present (and so cannot be assigned).
    pub async fn rescan(&self) -> Result<usize> {
        let sysfs = self.sysfs.clone();
        let configured = self.cfg.devices.clone();
        let found = tokio::task::spawn_blocking(move || sysfs.scan(&configured))
            .await
            .map_err(|e| Error::internal("sysfs", e.to_string()))??;
        let sysfs = self.sysfs.clone();
        self.txn(move |t| {
            let seen: HashSet<String> = found.iter().map(|d| d.address.clone()).collect();
            for d in found {
                match t.state.devices.get_mut(&d.address) {
                    Some(old) => {
                        old.id = d.id;
                        old.class = d.class;
                        if old.kind != DeviceKind::GroupMember {
                            old.kind = d.kind;
                        }
                        old.iommu_group = d.iommu_group;
                        old.group_members = d.group_members;
                        old.numa_node = d.numa_node;
                        old.link = d.link;
                        old.serial = d.serial;
                        old.driver = d.driver;
                        old.present = true;
                    }
                    None => {
                        t.state.devices.insert(d.address.clone(), d);
                    }
                }
            }
            for d in t.state.devices.values_mut() {
                if !seen.contains(&d.address) {
                    d.present = sysfs.function(&d.address).is_ok();
                }
            }
            Ok(t.state.devices.len())
        })
        .await
    }

    /// Binds `addr`'s whole IOMMU group to vfio-pci and sends it to sanitizing.
    pub async fn enroll(self: &Arc<Self>, addr: &str) -> Result<()> {
        if !lifecycle::valid_pci_address(addr) {
            return Err(Error::bad(
                "address",
                format!("{addr:?} is not a PCI address DDDD:BB:DD.F"),
            ));
        }
        let _one_at_a_time = self.enroll_lock.lock().await;
        let st = self.state().await?;
        let d = st.devices.get(addr).ok_or_else(|| {
            Error::not_found(
                "address",
                format!("no device {addr} in the inventory (rescan?)"),
            )
        })?;
        if d.state != DeviceState::Unenrolled {
            return Err(Error::conflict(
                "state",
                format!("device {addr} is already enrolled ({})", d.state.name()),
            ));
        }
        crash::point("enroll:start");
        let sysfs = self.sysfs.clone();
        let disallowed = self.cfg.disallowed_host_drivers.clone();
        let a = addr.to_string();
        let key = driver_change_key(addr, d.iommu_group);
        let bound = self
            .driver_change(key, move || sysfs.enroll_group(&a, &disallowed))
            .await;
        let bound = match bound {
            Ok(b) => b,
            Err(e) => {
                let (a, why) = (
                    addr.to_string(),
                    format!("enrolment refused: {}", e.message),
                );
                let _ = self
                    .txn(move |t| {
                        if let Some(d) = t.state.devices.get_mut(&a) {
                            d.reason = Some(why);
                        }
                        Ok(())
                    })
                    .await;
                return Err(e);
            }
        };
        crash::point("enroll:bound");
        let members: Vec<_> = bound
            .iter()
            .map(|f| {
                let kind = st
                    .devices
                    .get(&f.address)
                    .map_or(DeviceKind::GroupMember, |d| d.kind);
                self.sysfs.describe(f, kind)
            })
            .collect();
        let a = addr.to_string();
        self.txn(move |t| lifecycle::enroll(&mut t.state, &a, &members))
            .await?;
        crash::point("enroll:committed");
        self.event(
            "device",
            addr,
            "enrolled: group bound to vfio-pci, sanitizing",
        );
        self.kick_scrubs().await;
        Ok(())
    }

    /// Operator release of a quarantined device: scrubbed again.
    pub async fn release(self: &Arc<Self>, addr: &str) -> Result<()> {
        let a = addr.to_string();
        self.txn(move |t| lifecycle::operator_release(&mut t.state, &a))
            .await?;
        crash::point("release:committed");
        self.event("device", addr, "released by the operator: sanitizing");
        self.kick_scrubs().await;
        Ok(())
    }

    /// Operator unenrolment: `addr`'s whole IOMMU group leaves bulwarkd's care and
    /// goes back to the host's drivers. The database says so first (the devices are
    /// unenrolled, their scrubs forgotten), then sysfs is written: a crash between
    /// leaves unenrolled devices still on vfio-pci, which no VM is given and which
    /// enrol again. Returns each member with the host driver it is on now.
    pub async fn unenroll(self: &Arc<Self>, addr: &str) -> Result<Vec<(String, Option<String>)>> {
        let _one_at_a_time = self.enroll_lock.lock().await;
        let group = self
            .state()
            .await?
            .devices
            .get(addr)
            .and_then(|d| d.iommu_group);
        let key = driver_change_key(addr, group);
        self.refuse_if_changing(&key)?;
        let a = addr.to_string();
        let members = self
            .txn(move |t| lifecycle::unenroll(&mut t.state, &a))
            .await?;
        crash::point("unenroll:committed");
        let sysfs = self.sysfs.clone();
        let m = members.clone();
        let done = self
            .driver_change(key, move || sysfs.unenroll_members(&m))
            .await;
        match done {
            Ok(drivers) => {
                let text: Vec<String> = drivers
                    .iter()
                    .map(|(m, d)| format!("{m} on {}", d.as_deref().unwrap_or("no driver")))
                    .collect();
                self.event(
                    "device",
                    addr,
                    format!("unenrolled by the operator: {}", text.join(", ")),
                );
                Ok(drivers)
            }
            Err(e) => {
                let why = format!(
                    "{}, but giving it back to the host failed: {}",
                    lifecycle::OPERATOR_UNENROLLED,
                    e.message
                );
                let (ms, w) = (members.clone(), why.clone());
                let _ = self
                    .txn(move |t| {
                        for m in &ms {
                            if let Some(d) = t.state.devices.get_mut(m) {
                                d.reason = Some(w.clone());
                            }
                        }
                        Ok(())
                    })
                    .await;
                self.event("device", addr, why);
                Err(e)
            }
        }
    }

    /// Refuses (409) a driver change of `key` while an earlier one has not returned.
    fn refuse_if_changing(&self, key: &str) -> Result<()> {
        match self.driver_changes.since(std::slice::from_ref(&key.to_string())) {
            Some((_, since)) => Err(Error::conflict(
                "address",
                format!(
                    "{key}: the driver change bulwarkd asked of the kernel {} s ago has not finished (a driver's unbind or probe hangs: see the kernel log); nothing more is written to it until that one returns",
                    since.elapsed().as_secs()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Runs `change` (sysfs writes that move `key`'s devices between drivers) on a
    /// blocking thread, bounded by `driver_change_timeout_ms`. When the kernel has not
    /// finished by then (a driver's remove callback that hangs), bulwarkd stops
    /// waiting and says so, so that the enrolment lock serves every other group
    /// again; `key` refuses further changes until the abandoned thread returns.
    async fn driver_change<T: Send + 'static>(
        &self,
        key: String,
        change: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.refuse_if_changing(&key)?;
        let running = self.driver_changes.mark(vec![key.clone()]);
        let task = tokio::task::spawn_blocking(move || {
            let _running = running;
            change()
        });
        let limit = Duration::from_millis(self.cfg.driver_change_timeout_ms);
        match tokio::time::timeout(limit, task).await {
            Ok(joined) => joined.map_err(|e| Error::internal("sysfs", e.to_string()))?,
            Err(_) => Err(Error::internal(
                "address",
                format!(
                    "{key}: the kernel did not finish the driver change within {} ms (a driver's unbind or probe hangs: see the kernel log); bulwarkd stopped waiting and writes nothing more to it until that change returns",
                    self.cfg.driver_change_timeout_ms
                ),
            )),
        }
    }

    // ----- sanitization -----

    /// Starts a scrub for every sanitizing device that has none running.
    pub async fn kick_scrubs(self: &Arc<Self>) {
        let st = match self.state().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read state to start scrubs");
                return;
            }
        };
        for d in st
            .devices
            .values()
            .filter(|d| d.state == DeviceState::Sanitizing)
        {
            if lock(&self.scrubbing).insert(d.address.clone()) {
                let me = Arc::clone(self);
                let (addr, group) = (d.address.clone(), d.iommu_group);
                tokio::spawn(async move {
                    if let Err(e) = me.scrub(&addr, group).await {
                        tracing::error!(device = %addr, error = %e, "scrub could not be recorded");
                    }
                    lock(&me.scrubbing).remove(&addr);
                });
            }
        }
    }

    /// Whether any scrub is running (tests and `GET /node`).
    pub fn scrubs_running(&self) -> usize {
        lock(&self.scrubbing).len()
    }

    /// Scrubs `addr` (in IOMMU group `group`, as the state that scheduled it says).
    async fn scrub(self: &Arc<Self>, addr: &str, group: Option<u32>) -> Result<()> {
        // The bus first, then the group: always in that order, so no two scrubs
        // wait for each other.
        let mut keys = vec![format!("bus {}", addr.get(..7).unwrap_or(addr))];
        keys.extend(group.map(|g| format!("group {g}")));
        let locks: Vec<_> = keys
            .iter()
            .map(|k| {
                Arc::clone(
                    lock(&self.scrub_locks)
                        .entry(k.clone())
                        .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(()))),
                )
            })
            .collect();
        let mut _held = Vec::new();
        for l in &locks {
            _held.push(l.lock().await);
        }
        let t0 = Instant::now();
        let a = addr.to_string();
        let started = now_ms();
        let (id, dev) = self
            .txn(move |t| {
                let id = t.new_scrub_id();
                let d = t
                    .state
                    .devices
                    .get_mut(&a)
                    .ok_or_else(|| Error::not_found("address", "device vanished"))?;
                if d.state != DeviceState::Sanitizing {
                    return Err(Error::conflict(
                        "state",
                        format!("{a} is {}, not sanitizing", d.state.name()),
                    ));
                }
                d.scrub_in_progress = Some(id);
                let dev = d.clone();
                t.put_scrub(ScrubRecord {
                    id,
                    device: a,
                    started_at_ms: started,
                    finished_at_ms: None,
                    steps: vec![],
                    outcome: ScrubOutcome::InProgress,
                    reason: None,
                });
                Ok((id, dev))
            })
            .await?;
        crash::point("scrub:record-created");
        self.event("device", addr, format!("scrub {id} started"));
        let mut record = ScrubRecord {
            id,
            device: addr.into(),
            started_at_ms: started,
            finished_at_ms: None,
            steps: vec![],
            outcome: ScrubOutcome::InProgress,
            reason: None,
        };
        let timeout = Duration::from_millis(self.cfg.scrub_step_timeout_ms);
        for step in Step::ALL {
            let s0 = now_ms();
            let san = Arc::clone(&self.sanitizer);
            let d = dev.clone();
            let result = if let Some((key, since)) = self.scrub_steps.since(&keys) {
                // An earlier step on this bus or group outlived its timeout and still
                // runs: the device's group may be open there, the hardware wedged.
                Err((
                    "not-run".into(),
                    format!(
                        "a scrub step on {key} timed out {} s ago and has not returned: nothing on {key} is scrubbed until it does",
                        since.elapsed().as_secs()
                    ),
                ))
            } else {
                let running = self.scrub_steps.mark(keys.clone());
                let run = tokio::task::spawn_blocking(move || {
                    let _running = running;
                    san.step(&d, step)
                });
                match tokio::time::timeout(timeout, run).await {
                    Ok(Ok(r)) => r.map_err(|f| (f.method, f.detail)),
                    Ok(Err(e)) => Err(("?".into(), format!("the step's thread failed: {e}"))),
                    Err(_) => Err((
                        "timeout".into(),
                        format!(
                            "{} did not finish within {} ms; the device is left hung",
                            step.name(),
                            timeout.as_millis()
                        ),
                    )),
                }
            };
            let (ok, method, detail) = match result {
                Ok(r) => (true, r.method, r.detail),
                Err((m, d)) => (false, m, d),
            };
            record.steps.push(ScrubStep {
                step: step.name().into(),
                method,
                started_at_ms: s0,
                finished_at_ms: now_ms(),
                ok,
                detail: detail.clone(),
            });
            if !ok {
                record.outcome = ScrubOutcome::Failed;
                record.finished_at_ms = Some(now_ms());
                let reason = format!("scrub {id} failed at {}: {detail}", step.name());
                record.reason = Some(reason.clone());
                let (a, r, why) = (addr.to_string(), record.clone(), reason.clone());
                self.txn(move |t| {
                    t.put_scrub(r);
                    lifecycle::scrub_failed(&mut t.state, &a, &why)
                })
                .await?;
                self.metrics.scrub_done("failed", t0.elapsed());
                self.event("device", addr, format!("quarantined: {reason}"));
                return Ok(());
            }
            let r = record.clone();
            self.txn(move |t| {
                t.put_scrub(r);
                Ok(())
            })
            .await?;
            crash::point(match step {
                Step::Reset => "scrub:reset-done",
                Step::VendorScrub => "scrub:vendor-done",
            });
        }
        record.outcome = ScrubOutcome::Passed;
        record.finished_at_ms = Some(now_ms());
        let (a, r) = (addr.to_string(), record);
        self.txn(move |t| {
            t.put_scrub(r);
            lifecycle::scrub_passed(&mut t.state, &a, id)
        })
        .await?;
        crash::point("scrub:committed");
        self.metrics.scrub_done("passed", t0.elapsed());
        self.event("device", addr, format!("scrub {id} passed: available"));
        Ok(())
    }

    // ----- tenants -----

    pub async fn create_tenant(&self, t: Tenant) -> Result<()> {
        for (i, k) in t.signer_keys.iter().enumerate() {
            bulwark_image::PublicKey::from_pem(k).map_err(|e| {
                Error::bad(
                    format!("signer_keys[{i}]"),
                    format!("not a usable public key: {e}"),
                )
            })?;
        }
        let id = t.id.clone();
        self.txn(move |x| lifecycle::create_tenant(&mut x.state, t))
            .await?;
        self.event("tenant", &id, "created");
        Ok(())
    }

    pub async fn delete_tenant(&self, id: &str) -> Result<()> {
        let i = id.to_string();
        self.txn(move |x| lifecycle::delete_tenant(&mut x.state, &i))
            .await?;
        self.event("tenant", id, "deleted");
        Ok(())
    }

    // ----- VMs -----

    /// Verifies the image against the tenant's keys and minimum version, then
    /// records the VM with its devices assigned.
    pub async fn create_vm(&self, mut req: CreateVm) -> Result<Vm> {
        req.validate()?;
        if !req.image.starts_with('/') {
            let p = crate::images::path(&self.state_dir, &req.image)
                .map_err(|e| Error::bad("image", e.message))?;
            if !p.exists() {
                return Err(Error::not_found(
                    "image",
                    format!("no uploaded image {} (GET /images)", req.image),
                ));
            }
            req.image = p.display().to_string();
        }
        let st = self.state().await?;
        let tenant = st
            .tenants
            .get(&req.tenant)
            .cloned()
            .ok_or_else(|| Error::not_found("tenant", format!("no tenant {}", req.tenant)))?;
        if st.vms.contains_key(&req.id) {
            return Err(Error::conflict(
                "id",
                format!("VM {} already exists", req.id),
            ));
        }
        lifecycle::check_tenancy(&st, &req.tenant)?;
        let image = PathBuf::from(&req.image);
        let signers = tokio::task::spawn_blocking(move || verify_image(&image, &tenant))
            .await
            .map_err(|e| Error::internal("image", e.to_string()))??;
        crash::point("create:verified");
        let r = req.clone();
        let vm = self
            .txn(move |t| {
                let mut vm = lifecycle::create_vm(&mut t.state, &r, now_ms())?;
                vm.image_signers = signers;
                t.state.vms.insert(vm.id.clone(), vm.clone());
                Ok(vm)
            })
            .await?;
        crash::point("create:committed");
        self.event(
            "vm",
            &vm.id,
            format!("created with {} device(s)", vm.devices.len()),
        );
        Ok(vm)
    }

    /// Deletes uploaded image `name` unless a VM uses it.
    pub async fn delete_image(&self, name: &str) -> Result<()> {
        let p = crate::images::path(&self.state_dir, name)?;
        let st = self.state().await?;
        let ps = p.display().to_string();
        if let Some(v) = st.vms.values().find(|v| v.image == ps) {
            return Err(Error::conflict(
                "name",
                format!("VM {} uses image {name}", v.id),
            ));
        }
        match std::fs::remove_file(&p) {
            Ok(()) => {
                self.event("image", name, "deleted");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found("name", format!("no image {name}")))
            }
            Err(e) => Err(Error::internal(
                "storage",
                format!("removing {}: {e}", p.display()),
            )),
        }
    }

    /// Stores an uploaded image.
    pub async fn upload_image(
        &self,
        name: &str,
        body: axum::body::Body,
    ) -> Result<crate::images::ImageInfo> {
        let info =
            crate::images::upload(&self.state_dir, name, body, self.cfg.max_image_bytes).await?;
        self.event("image", name, format!("uploaded ({} bytes)", info.bytes));
        Ok(info)
    }

    /// Receives a signed node OS image and writes it to the inactive slot of the
    /// node's ESP (`node_update`), one update at a time.
    pub async fn update_node(&self, body: axum::body::Body) -> Result<serde_json::Value> {
        let cfg = match crate::node_update::configured(&self.cfg.node_update) {
            Ok(c) => c.clone(),
            Err(e) => {
                crate::images::discard(body, self.cfg.max_image_bytes).await;
                return Err(e);
            }
        };
        let _one = self.node_update_lock.lock().await;
        let dir = self.state_dir.join("node-update");
        // What a killed update left behind.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::internal("storage", format!("creating {}: {e}", dir.display())))?;
        let tmp = dir.join("upload.bwi");
        let received = crate::images::receive(&tmp, body, self.cfg.max_image_bytes).await;
        let result = match received {
            Ok(()) => {
                let t = tmp.clone();
                tokio::task::spawn_blocking(move || crate::node_update::apply(&cfg, &t))
                    .await
                    .map_err(|e| Error::internal("node_update", e.to_string()))
                    .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        match &result {
            Ok(r) => self.event(
                "node",
                "image",
                format!("update written to the inactive slot: {r}"),
            ),
            Err(e) => self.event("node", "image", format!("update refused: {e}")),
        }
        result
    }

    /// The node's boot slots (`node_update.esp`), and the node image evidence
    /// states (`attested_image`: where it came from, the image or why there is none).
    pub async fn node_boot_state(&self) -> Result<serde_json::Value> {
        let cfg = crate::node_update::configured(&self.cfg.node_update)?.clone();
        let mut v = tokio::task::spawn_blocking(move || crate::node_update::boot_state(&cfg))
            .await
            .map_err(|e| Error::internal("node_update", e.to_string()))??;
        if let (Some(o), Some(a)) = (v.as_object_mut(), self.attested_image()) {
            o.insert("attested_image".into(), a);
        }
        Ok(v)
    }

    /// The node image evidence states: `{source, image}` or `{source, error}`;
    /// `None` without `attestation` in the config.
    pub fn attested_image(&self) -> Option<serde_json::Value> {
        let a = self.cfg.attestation.as_ref()?;
        let source = match a.node_image {
            crate::config::NodeImageSource::Booted => "booted",
            crate::config::NodeImageSource::Stated(_) => "config",
        };
        Some(match self.node_image.as_ref()? {
            Ok(n) => serde_json::json!({"source": source, "image": {
                "name": n.name,
                "version": n.version,
                "manifest_sha384": n.manifest_sha384,
                "signer_key_ids": n.signer_key_ids,
            }}),
            Err(e) => serde_json::json!({"source": source, "error": e}),
        })
    }

    /// Deletes a VM without a VMM.
    pub async fn delete_vm(self: &Arc<Self>, id: &str) -> Result<()> {
        crash::point("delete:start");
        let i = id.to_string();
        let vm = self
            .txn(move |t| lifecycle::delete_vm(&mut t.state, &i))
            .await?;
        crash::point("delete:committed");
        let _ = std::fs::remove_dir_all(VmPaths::new(&self.state_dir, id).dir);
        let _ = std::fs::remove_dir_all(vmm::jail_dir(&self.state_dir, id));
        self.close_guest_channel(id);
        lock(&self.guests).remove(id);
        let (store, vm_id) = (Arc::clone(&self.store), id.to_string());
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || store.delete_guest_report(&vm_id)).await
        {
            tracing::warn!(vm = %id, error = %e, "forgetting the guest's report");
        }
        self.event("vm", id, format!("deleted (was {})", vm.state.name()));
        self.kick_scrubs().await;
        Ok(())
    }

    /// Starts the VM's VMM, jailed, and configures it through its API socket.
    pub async fn start_vm(self: &Arc<Self>, id: &str) -> Result<Vm> {
        let jail = self.cfg.jail.clone().ok_or_else(|| {
            Error::new(Kind::Unprocessable, "jail", "no jail is configured (config `jail`: uid_base, gid): bulwarkd never runs a VMM unjailed")
        })?;
        let bin = self.cfg.vmm_bin.clone().ok_or_else(|| {
            Error::new(
                Kind::Unprocessable,
                "vmm_bin",
                "no bulwark-vmm binary configured (--vmm-bin or config vmm_bin)",
            )
        })?;
        if !bin.is_file() {
            return Err(Error::new(
                Kind::Unprocessable,
                "vmm_bin",
                format!("{} is not a file", bin.display()),
            ));
        }
        let i = id.to_string();
        let j = jail.clone();
        let sysfs_root = self.cfg.sysfs_root.clone();
        let (vm, tenant) = self
            .txn(move |t| {
                let used: HashSet<u32> = t.state.vms.values().filter(|v| v.state.has_vmm()).filter_map(|v| v.jail.as_ref().map(|j| j.uid)).collect();
                let uid = (j.uid_base..j.uid_base + j.uid_count)
                    .find(|u| !used.contains(u))
                    .ok_or_else(|| Error::conflict("jail", format!("all {} VMM uids are in use", j.uid_count)))?;
                let mut vm = lifecycle::begin_start(&mut t.state, &i)?;
                let tenant = t.state.tenants.get(&vm.tenant).cloned().ok_or_else(|| Error::internal("tenant", "VM of a missing tenant"))?;
                let mut notes = Vec::new();
                if !j.pivot_root {
                    notes.push("mount namespace: private but not pivoted (config jail.pivot_root false): the VMM sees the host files its uid may read".to_string());
                }
                let numa = match &j.cgroup_parent {
                    None => {
                        notes.push("cgroup: none (config jail.cgroup_parent not set)".into());
                        None
                    }
                    Some(parent) => {
                        let devices: Vec<(String, Option<i32>)> = vm.devices.iter().map(|a| (a.clone(), t.state.devices.get(a).and_then(|d| d.numa_node))).collect();
                        let controllers = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
                        match vmm::numa_placement(&sysfs_root, &devices, &controllers) {
                            Ok(p) => p,
                            Err(why) => {
                                notes.push(format!("NUMA placement: none ({why})"));
                                None
                            }
                        }
                    }
                };
                vm.jail = Some(JailRecord { uid, gid: j.gid, cgroup: j.cgroup_parent.as_ref().map(|p| p.join(&i).display().to_string()), notes, numa });
                t.state.vms.insert(i.clone(), vm.clone());
                Ok((vm, tenant))
            })
            .await?;
        crash::point("start:devices-in-use");
        self.event("vm", id, "starting");
        match self.launch(&vm, &tenant, &jail, &bin).await {
            Ok(()) => {
                let st = self.state().await?;
                Ok(st.vms.get(id).cloned().unwrap_or(vm))
            }
            Err(e) => {
                let reason = format!("VMM did not start: {}", e.message);
                let (i, r) = (id.to_string(), reason.clone());
                self.txn(move |t| lifecycle::vm_ended(&mut t.state, &i, Some(&r)))
                    .await?;
                if let Some(p) = &jail.cgroup_parent {
                    vmm::Cgroup::remove(p, id);
                }
                let _ = std::fs::remove_dir_all(vmm::jail_dir(&self.state_dir, id));
                self.close_guest_channel(id);
                self.event("vm", id, format!("failed: {reason}"));
                self.kick_scrubs().await;
                Err(e)
            }
        }
    }

    /// The machine bulwarkd gives `vm` beyond its record: its assigned functions
    /// with their IDs (bridges left out), the PCI window, the node's guest firmware,
    /// and whether its image has a rootfs (read from the manifest; the VMM verifies it).
    fn launch_shape(&self, st: &NodeState, vm: &Vm) -> vmm::LaunchShape {
        let rootfs = bulwark_image::Bundle::open(Path::new(&vm.image)).is_ok_and(|b| {
            b.unverified_manifest()
                .component(bulwark_image::ComponentKind::Rootfs)
                .is_some()
        });
        vmm::LaunchShape {
            vfio: vm
                .devices
                .iter()
                .filter_map(|a| st.devices.get(a))
                .filter(|d| d.class != "0x060400")
                .map(|d| (d.address.clone(), d.id.clone()))
                .collect(),
            mmio64_gib: self.cfg.vmm_mmio64_gib,
            firmware: self.cfg.vm_firmware.clone(),
            rootfs,
        }
    }

    /// The bulwark-vmm config `vm` starts (or would start) with: what a tenant needs
    /// to predict its launch measurement (`bulwark-verify predict --vm`).
    pub async fn vmm_config_of(&self, id: &str) -> Result<serde_json::Value> {
        let st = self.state().await?;
        let vm = st
            .vms
            .get(id)
            .ok_or_else(|| Error::not_found("vm", format!("no VM {id}")))?;
        let tenant = st
            .tenants
            .get(&vm.tenant)
            .ok_or_else(|| Error::internal("tenant", "VM of a missing tenant"))?;
        let mut paths = VmPaths::new(&self.state_dir, id);
        paths.keys = (0..tenant.signer_keys.len())
            .map(|i| paths.dir.join(format!("signer-{i}.pem")))
            .collect();
        Ok(vmm::vmm_config(
            vm,
            tenant,
            &paths,
            &self.launch_shape(&st, vm),
        ))
    }

    async fn launch(
        self: &Arc<Self>,
        vm: &Vm,
        tenant: &Tenant,
        jail: &JailConfig,
        bin: &Path,
    ) -> Result<()> {
        let uid = vm.jail.as_ref().map_or(jail.uid_base, |j| j.uid);
        let mut paths = VmPaths::new(&self.state_dir, &vm.id);
        vmm::grant_kvm(Path::new("/dev/kvm"), jail.gid)?;
        vmm::prepare(&mut paths, vm, tenant, uid, jail.gid)?;
        self.open_guest_channel(&vm.id, &paths, uid, jail.gid)?;
        let listeners = crate::ports::bind(&self.cfg.port_bind_addr, &vm.ports).await?;
        let tasks = listeners
            .into_iter()
            .map(|(p, l)| {
                tokio::spawn(crate::ports::serve(l, paths.vsock.clone(), p.vsock)).abort_handle()
            })
            .collect();
        if let Some(old) = lock(&self.port_tasks).insert(vm.id.clone(), tasks) {
            old.iter().for_each(tokio::task::AbortHandle::abort);
        }
        // The VMM's uid must be able to open its VFIO groups.
        let st = self.state().await?;
        let groups: std::collections::BTreeSet<u32> = vm
            .devices
            .iter()
            .filter_map(|a| st.devices.get(a)?.iommu_group)
            .collect();
        for g in &groups {
            let node = Path::new("/dev/vfio").join(g.to_string());
            std::os::unix::fs::chown(&node, Some(uid), Some(jail.gid)).map_err(|e| {
                Error::new(
                    Kind::Unprocessable,
                    "devices",
                    format!(
                        "VFIO is not available on this machine for group {g} ({}: {e})",
                        node.display()
                    ),
                )
            })?;
        }
        let cgroup = match &jail.cgroup_parent {
            Some(p) => Some(vmm::Cgroup::create(p, vm, jail.pids_max)?),
            None => None,
        };
        let shape = self.launch_shape(&st, vm);
        let config = vmm::vmm_config(vm, tenant, &paths, &shape);
        let root = if jail.pivot_root {
            let groups: Vec<u32> = groups.iter().copied().collect();
            let mut ro = jail.extra_ro_paths.clone();
            ro.extend(shape.firmware.iter().cloned());
            Some(vmm::jail_root(
                &self.state_dir,
                &vm.id,
                &paths.dir,
                Path::new(&vm.image),
                bin,
                &groups,
                &ro,
            )?)
        } else {
            None
        };
        let memlock = vmm::memlock_bytes(vm, &shape);
        let mut spawned = vmm::spawn(bin, &paths, jail, uid, cgroup, root, memlock)?;
        let (i, pid, sock) = (
            vm.id.clone(),
            spawned.pid,
            paths.api_sock.display().to_string(),
        );
        if let Err(e) = self
            .txn(move |t| lifecycle::spawned(&mut t.state, &i, pid, &sock))
            .await
        {
            vmm::kill(&spawned.pidfd);
            let _ = spawned.child.wait().await;
            return Err(e);
        }
        crash::point("start:spawned");
        if let Err(e) = vmm::configure_and_start(&paths, &config, &mut spawned.child).await {
            vmm::kill(&spawned.pidfd);
            let _ = spawned.child.wait().await;
            let tail = vmm::log_tail(&paths);
            return Err(Error::new(
                e.kind,
                e.field,
                if tail.is_empty() {
                    e.message
                } else {
                    format!("{} (VMM log: {tail})", e.message)
                },
            ));
        }
        let (i, pid, sock) = (
            vm.id.clone(),
            spawned.pid,
            paths.api_sock.display().to_string(),
        );
        if let Err(e) = self
            .txn(move |t| lifecycle::started(&mut t.state, &i, pid, &sock))
            .await
        {
            vmm::kill(&spawned.pidfd);
            let _ = spawned.child.wait().await;
            return Err(e);
        }
        self.event("vm", &vm.id, format!("running (pid {pid})"));
        self.watch(&vm.id, spawned.pidfd, Some(spawned.child))?;
        Ok(())
    }

    /// Listens for the guest's channel (`<vsock uds>_1024`) before the VMM starts,
    /// owned by the VMM's uid so that it can connect.
    fn open_guest_channel(
        self: &Arc<Self>,
        id: &str,
        paths: &VmPaths,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = crate::guest::channel_path(&paths.vsock);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).map_err(|e| {
            Error::new(
                Kind::Unprocessable,
                "vsock",
                format!("listening on {}: {e}", path.display()),
            )
        })?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| {
                Error::new(
                    Kind::Unprocessable,
                    "vsock",
                    format!("{}: {e}", path.display()),
                )
            })?;
        // What the guest reported before (a restarted bulwarkd, a restarted VM) goes on.
        let saved = self
            .store
            .guest_report(id)
            .ok()
            .flatten()
            .and_then(|j| crate::guest::GuestView::from_saved(&j))
            .unwrap_or_default();
        let view: crate::guest::Shared = Arc::new(Mutex::new(saved));
        let store = Arc::clone(&self.store);
        let vm = id.to_string();
        let persist: crate::guest::Persist = Arc::new(move |v: &crate::guest::GuestView| {
            let stored = serde_json::to_string(v)
                .map_err(|e| e.to_string())
                .and_then(|j| store.put_guest_report(&vm, &j).map_err(|e| e.to_string()));
            if let Err(e) = stored {
                tracing::warn!(vm = %vm, error = %e, "storing the guest's report");
            }
        });
        // The guest's attested TLS handshakes get this VM's evidence for their nonce
        // and key; a bulwarkd that is going away has none to give.
        let agent = Arc::downgrade(self);
        let vm_id = id.to_string();
        let evidence: crate::guest::EvidenceSource = Arc::new(move |nonce, tls_key| {
            let (agent, vm_id) = (agent.clone(), vm_id.clone());
            Box::pin(async move {
                let agent = agent.upgrade().ok_or("bulwarkd is stopping")?;
                agent
                    .evidence_for(&vm_id, nonce, Some(tls_key))
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        let (requests, queue) = tokio::sync::mpsc::channel(crate::guest::MAX_QUEUED_REQUESTS);
        let task = tokio::spawn(crate::guest::serve(
            listener,
            view.clone(),
            evidence,
            queue,
            persist,
        ));
        let link = GuestLink {
            view,
            task: Some(task.abort_handle()),
            requests: Some(requests),
        };
        if let Some(GuestLink {
            task: Some(old), ..
        }) = lock(&self.guests).insert(id.to_string(), link)
        {
            old.abort();
        }
        Ok(())
    }

    /// Sends `make(reply)` to VM `id`'s guest and waits (bounded) for the answer.
    pub async fn guest_request<T>(
        &self,
        id: &str,
        make: impl FnOnce(
            tokio::sync::oneshot::Sender<std::result::Result<T, String>>,
        ) -> crate::guest::HostRequest,
    ) -> Result<T> {
        const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
        let requests = lock(&self.guests)
            .get(id)
            .and_then(|l| l.requests.clone())
            .ok_or_else(|| {
                Error::new(
                    Kind::Conflict,
                    "guest",
                    format!("VM {id} has no guest channel (not running)"),
                )
            })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        requests.try_send(make(tx)).map_err(|e| {
            Error::new(
                Kind::Conflict,
                "guest",
                format!("VM {id}'s guest channel takes no request now: {e}"),
            )
        })?;
        match tokio::time::timeout(ANSWER_DEADLINE, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(why))) => Err(Error::new(Kind::Conflict, "guest", why)),
            Ok(Err(_)) => Err(Error::new(
                Kind::Conflict,
                "guest",
                "the guest disconnected before answering",
            )),
            Err(_) => Err(Error::new(
                Kind::Conflict,
                "guest",
                format!(
                    "the guest did not answer within {} s",
                    ANSWER_DEADLINE.as_secs()
                ),
            )),
        }
    }

    /// Stops listening for VM `id`'s guest (its view stays for `GET /vms/{id}/guest`)
    /// and closes its exposed ports.
    fn close_guest_channel(&self, id: &str) {
        if let Some(tasks) = lock(&self.port_tasks).remove(id) {
            tasks.iter().for_each(tokio::task::AbortHandle::abort);
        }
        if let Some(link) = lock(&self.guests).get_mut(id) {
            if let Some(t) = link.task.take() {
                t.abort();
            }
            link.requests = None;
        }
    }

    /// What VM `id`'s guest reported (empty when it never connected): the live view,
    /// or the one stored before bulwarkd restarted.
    pub fn guest_view(&self, id: &str) -> crate::guest::GuestView {
        if let Some(l) = lock(&self.guests).get(id) {
            return l.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        }
        self.store
            .guest_report(id)
            .ok()
            .flatten()
            .and_then(|j| crate::guest::GuestView::from_saved(&j))
            .unwrap_or_default()
    }

    /// Notices the end of VM `id`'s VMM (pidfd) and records it.
    fn watch(
        self: &Arc<Self>,
        id: &str,
        pidfd: OwnedFd,
        child: Option<tokio::process::Child>,
    ) -> Result<()> {
        let dup = pidfd
            .try_clone()
            .map_err(|e| Error::internal("vmm", format!("dup pidfd: {e}")))?;
        lock(&self.vmms).insert(
            id.to_string(),
            VmmEntry {
                pidfd: dup,
                stop_requested: false,
            },
        );
        let me = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            vmm::exited(pidfd).await;
            let status = match child {
                Some(mut c) => Some(c.wait().await.ok().and_then(|s| s.code())),
                None => None,
            };
            let stop_requested = lock(&me.vmms).remove(&id).is_some_and(|e| e.stop_requested);
            let paths = VmPaths::new(&me.state_dir, &id);
            let failure = match (stop_requested, status) {
                (true, _) | (false, Some(Some(0))) => None,
                (false, Some(Some(n))) => Some(format!(
                    "VMM exited with status {n}: {}",
                    vmm::log_tail(&paths)
                )),
                (false, Some(None)) => Some("VMM was killed by a signal".to_string()),
                (false, None) => Some(
                    "VMM (re-adopted after a bulwarkd restart) exited; status unknown".to_string(),
                ),
            };
            let (i, f) = (id.clone(), failure.clone());
            match me
                .txn(move |t| lifecycle::vm_ended(&mut t.state, &i, f.as_deref()))
                .await
            {
                Ok(()) => me.event(
                    "vm",
                    &id,
                    failure.map_or("stopped".to_string(), |f| format!("failed: {f}")),
                ),
                Err(e) => {
                    tracing::error!(vm = %id, error = %e, "could not record the end of a VMM")
                }
            }
            if let Some(p) = me.cfg.jail.as_ref().and_then(|j| j.cgroup_parent.as_ref()) {
                vmm::Cgroup::remove(p, &id);
            }
            let _ = std::fs::remove_dir_all(vmm::jail_dir(&me.state_dir, &id));
            me.close_guest_channel(&id);
            me.kick_scrubs().await;
        });
        Ok(())
    }

    /// Stops a running VM through its VMM's API (SIGKILL if it does not end).
    pub async fn stop_vm(self: &Arc<Self>, id: &str) -> Result<Vm> {
        let st = self.state().await?;
        let vm = st
            .vms
            .get(id)
            .ok_or_else(|| Error::not_found("id", format!("no VM {id}")))?;
        if vm.state != VmState::Running {
            return Err(Error::conflict(
                "state",
                format!("VM {id} is {}, not running", vm.state.name()),
            ));
        }
        let sock = vm.api_sock.clone().map(PathBuf::from);
        {
            let mut m = lock(&self.vmms);
            let Some(e) = m.get_mut(id) else {
                return Err(Error::internal(
                    "state",
                    format!("VM {id} is running but bulwarkd holds no handle on its VMM"),
                ));
            };
            e.stop_requested = true;
        }
        if let Some(s) = sock {
            if let Err(e) = vmm::request_stop(&s).await {
                tracing::warn!(vm = %id, error = %e, "stop through the API failed; killing the VMM");
                self.kill_vmm(id);
            }
        }
        for round in 0..2 {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                let st = self.state().await?;
                match st.vms.get(id) {
                    Some(v) if v.state.has_vmm() => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Some(v) => return Ok(v.clone()),
                    None => return Err(Error::not_found("id", format!("VM {id} vanished"))),
                }
            }
            if round == 0 {
                tracing::warn!(vm = %id, "VMM did not stop within 15 s; killing it");
                self.kill_vmm(id);
            }
        }
        Err(Error::internal(
            "state",
            format!("VM {id}'s VMM did not end even after SIGKILL"),
        ))
    }

    fn kill_vmm(&self, id: &str) {
        if let Some(e) = lock(&self.vmms).get(id) {
            vmm::kill(&e.pidfd);
        }
    }

    // ----- recovery -----

    /// After a (re)start: refresh the inventory, re-adopt VMMs that still run, mark
    /// lost ones failed (their devices go to sanitizing), restart interrupted scrubs
    /// from the beginning.
    pub async fn reconcile(self: &Arc<Self>) -> Result<()> {
        crate::images::clean_interrupted(&self.state_dir);
        self.rescan().await?;
        let st = self.state().await?;
        // Interrupted scrubs: their records are closed as interrupted.
        let mut interrupted = Vec::new();
        for d in st.devices.values() {
            if let Some(id) = d.scrub_in_progress {
                let store = Arc::clone(&self.store);
                let rec = tokio::task::spawn_blocking(move || store.scrub(id))
                    .await
                    .map_err(|e| Error::internal("storage", e.to_string()))??;
                interrupted.push((d.address.clone(), rec));
            }
        }
        if !interrupted.is_empty() {
            let n = interrupted.len();
            self.txn(move |t| {
                for (addr, rec) in interrupted {
                    if let Some(mut r) = rec {
                        if r.outcome == ScrubOutcome::InProgress {
                            r.outcome = ScrubOutcome::Interrupted;
                            r.finished_at_ms = Some(now_ms());
                            r.reason = Some(
                                "bulwarkd stopped during the scrub; scrubbed again from the start"
                                    .into(),
                            );
                            t.put_scrub(r);
                        }
                    }
                    if let Some(d) = t.state.devices.get_mut(&addr) {
                        d.scrub_in_progress = None;
                    }
                }
                Ok(())
            })
            .await?;
            tracing::warn!(
                count = n,
                "interrupted scrubs will run again from the start"
            );
        }
        // VMMs.
        for vm in st.vms.values().filter(|v| v.state.has_vmm()) {
            let alive = match (vm.pid, &vm.api_sock) {
                (Some(pid), Some(sock)) if vm.state == VmState::Running => {
                    vmm::still_ours(pid, Path::new(sock)).await
                }
                _ => false,
            };
            if alive {
                let pid = vm.pid.unwrap_or_default();
                match vmm::pidfd(pid) {
                    Ok(fd) => {
                        self.watch(&vm.id, fd, None)?;
                        self.event("vm", &vm.id, format!("re-adopted running VMM (pid {pid})"));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(vm = %vm.id, error = %e, "cannot open a pidfd for a VMM that looked alive")
                    }
                }
            }
            let reason = match vm.state {
                VmState::Starting => "bulwarkd stopped while the VMM was starting; its VMM is gone or was not trusted",
                _ => "VMM lost: not running (or not answering on its API socket) when bulwarkd restarted",
            };
            // A VMM spawned for a VM that never reached running may still exist (and
            // hold the devices): it is killed before the devices move on. Only a
            // process whose command line names this VM's API socket (no recycled pid).
            if let (Some(pid), Some(sock)) = (vm.pid, vm.api_sock.as_deref()) {
                if vmm::names_socket(pid, Path::new(sock)) {
                    if let Ok(fd) = vmm::pidfd(pid) {
                        vmm::kill(&fd);
                        vmm::exited(fd).await;
                    }
                }
            }
            let (i, r) = (vm.id.clone(), reason.to_string());
            self.txn(move |t| lifecycle::vm_ended(&mut t.state, &i, Some(&r)))
                .await?;
            self.event("vm", &vm.id, format!("failed: {reason}"));
        }
        let st = self.state().await?;
        let bad = lifecycle::invariant_violations(&st);
        for v in &bad {
            tracing::error!(violation = %v, "state invariant violated");
        }
        self.kick_scrubs().await;
        Ok(())
    }

    /// `POST /vms/{id}/attest`: the evidence document (COSE_Sign1, docs/evidence.md)
    /// of running VM `id` for `nonce_hex`: the launch claims from its VMM's `GET /vm`,
    /// the isolation claims from bulwarkd's own records (single tenancy, whole
    /// groups, serials, the scrub before assignment), signed by the per-boot key.
    /// Software-key mode only (config `attestation.software_key`); TPM-backed evidence
    /// is not built yet.
    pub async fn attest(&self, id: &str, nonce_hex: &str) -> Result<Vec<u8>> {
        let nonce = hex::decode(nonce_hex)
            .ok()
            .filter(|n| (16..=64).contains(&n.len()))
            .ok_or_else(|| Error::bad("nonce", "must be 16 to 64 bytes in hex"))?;
        self.evidence_for(id, nonce, None).await
    }

    /// The evidence document for running VM `id`, challenge `nonce`, and (for a
    /// guest's attested TLS handshake) its TLS key's SPKI hash.
    pub async fn evidence_for(
        &self,
        id: &str,
        nonce: Vec<u8>,
        tls_key_sha256: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        use bulwark_attestation::evidence::document::{self as doc, ImageId};
        let st = self.state().await?;
        let vm = st
            .vms
            .get(id)
            .ok_or_else(|| Error::not_found("id", format!("no VM {id}")))?
            .clone();
        if vm.state != VmState::Running {
            return Err(Error::conflict(
                "state",
                format!(
                    "VM {id} is {}: only a running VM can be attested",
                    vm.state.name()
                ),
            ));
        }
        let cfg = self.cfg.attestation.as_ref().ok_or_else(|| {
            Error::new(
                Kind::Unprocessable,
                "attestation",
                "attestation is not configured (config attestation.node_image)",
            )
        })?;
        if !cfg.software_key && cfg.tpm.is_none() {
            return Err(Error::new(
                Kind::Unprocessable,
                "attestation",
                "no evidence key configured: attestation.tpm (a node's TPM) or attestation.software_key (tests and demos)",
            ));
        }
        let sock = vm.api_sock.clone().ok_or_else(|| {
            Error::internal("state", format!("running VM {id} has no API socket"))
        })?;
        let info = tokio::time::timeout(
            Duration::from_secs(10),
            crate::client::request(Path::new(&sock), "GET", "/vm", None),
        )
        .await
        .map_err(|_| Error::internal("vmm", "GET /vm: no answer within 10 s"))?
        .map_err(|e| Error::internal("vmm", format!("GET /vm: {e}")))?;
        if info.status != 200 {
            return Err(Error::internal(
                "vmm",
                format!("GET /vm answered {}", info.status),
            ));
        }
        let signers: Vec<Vec<u8>> = vm
            .image_signers
            .iter()
            .filter_map(|k| hex::decode(k).ok())
            .collect();
        let mut claims =
            bulwark_attestation::evidence::LaunchClaims::from_vm_info(&info.json(), &signers)
                .map_err(|e| Error::internal("vmm", format!("GET /vm: {e}")))?;
        // Isolation: bulwarkd's own statements replace what the VMM could not say.
        let mut unknown = Vec::new();
        let mut devices = Vec::new();
        for a in &vm.devices {
            let Some(d) = st.devices.get(a) else { continue };
            if d.class == "0x060400" {
                continue;
            }
            let group = lifecycle::group_of(&st, a);
            let exclusive = group
                .iter()
                .all(|m| st.devices[m].owner_vm.as_deref() == Some(id));
            let sanitized = match d.last_scrub {
                Some(rid) => {
                    let store = Arc::clone(&self.store);
                    let rec = tokio::task::spawn_blocking(move || store.scrub(rid))
                        .await
                        .map_err(|e| Error::internal("storage", e.to_string()))??;
                    rec.filter(|r| r.outcome == ScrubOutcome::Passed)
                        .map(|r| doc::Sanitization {
                            method: r
                                .steps
                                .iter()
                                .map(|s| s.method.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            // "scrubbed" only when a step cleared the device's memory and
                            // read it back zero; a reset alone is not a scrub.
                            result: if r
                                .steps
                                .iter()
                                .any(|s| crate::sanitize::clears_memory(&s.method))
                            {
                                "scrubbed".into()
                            } else {
                                "not-scrubbed".into()
                            },
                            at: r.finished_at_ms.unwrap_or(r.started_at_ms) / 1000,
                        })
                }
                None => None,
            };
            if d.serial.is_none() {
                unknown.push("isolation.devices[].serial".to_string());
            }
            if sanitized.is_none() {
                unknown.push("isolation.devices[].sanitized".to_string());
            }
            devices.push(doc::PciDevice {
                host_bdf: a.clone(),
                id: d.id.clone(),
                serial: d.serial.clone(),
                iommu_group: d.iommu_group,
                group_exclusive: Some(exclusive),
                sanitized,
            });
        }
        unknown.sort();
        unknown.dedup();
        let single = st.tenancy.owner.as_deref() == Some(vm.tenant.as_str())
            && st.vms.values().all(|v| v.tenant == vm.tenant);
        claims.isolation = doc::Isolation {
            source: "node-agent".into(),
            single_tenant: Some(single),
            devices,
            unknown,
        };
        let node = match self.node_image.as_ref() {
            Some(Ok(n)) => n,
            Some(Err(why)) => {
                return Err(Error::new(
                    Kind::Unprocessable,
                    "attestation.node_image",
                    format!("the node image that booted could not be determined: {why}"),
                ))
            }
            None => {
                return Err(Error::internal(
                    "attestation.node_image",
                    "not resolved at start",
                ))
            }
        };
        let inputs = bulwark_attestation::evidence::EvidenceInputs {
            node_image: ImageId {
                name: node.name.clone(),
                version: node.version,
                manifest_sha384: hex::decode(&node.manifest_sha384)
                    .unwrap_or_default()
                    .into(),
                signer_key_ids: node
                    .signer_key_ids
                    .iter()
                    .filter_map(|k| hex::decode(k).ok())
                    .map(Into::into)
                    .collect(),
            },
            tpm: None,
            launch: claims.launch,
            isolation: claims.isolation,
            tee: None,
            gpus: Vec::new(),
            nonce,
            timestamp: now_ms() / 1000,
            tls_key_sha256,
        };
        self.sign_evidence(cfg, inputs).await
    }

    /// Signs `inputs` with the node's attester, made (and a TPM's AK enrolled) on
    /// first use. TPM work blocks, so it runs off the async threads; one document
    /// at a time.
    async fn sign_evidence(
        &self,
        cfg: &crate::config::AttestationConfig,
        inputs: bulwark_attestation::evidence::EvidenceInputs,
    ) -> Result<Vec<u8>> {
        use bulwark_tpm::attester::Attester;
        let mut slot = self.attester.lock().await;
        let attester = match slot.take() {
            Some(a) => a,
            None => {
                let key = bulwark_attestation::evidence::EvidenceSigningKey::generate()
                    .map_err(|e| Error::internal("attest", format!("evidence key: {e}")))?;
                match cfg.tpm.clone() {
                    None => Attester::Software(key),
                    Some(t) => tokio::task::spawn_blocking(move || {
                        enroll(&t).map(|e| Attester::Tpm(Box::new(e), key))
                    })
                    .await
                    .map_err(|e| Error::internal("attest", e.to_string()))??,
                }
            }
        };
        let (attester, made) = tokio::task::spawn_blocking(move || {
            let mut attester = attester;
            let made = attester.evidence(inputs);
            (attester, made)
        })
        .await
        .map_err(|e| Error::internal("attest", e.to_string()))?;
        *slot = Some(attester);
        made.map_err(|e| Error::internal("attest", format!("building the evidence: {e}")))
    }

    /// Number of VMMs being watched.
    pub fn vmm_count(&self) -> usize {
        lock(&self.vmms).len()
    }
}

/// Opens and verifies the signed image against the tenant's keys and minimum version.
/// Returns the ids (hex) of the keys whose signatures met the policy.
pub fn verify_image(path: &Path, tenant: &Tenant) -> Result<Vec<String>> {
    let keys = tenant
        .signer_keys
        .iter()
        .map(|k| bulwark_image::PublicKey::from_pem(k))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::internal("tenant", format!("stored signer key unusable: {e}")))?;
    let policy = bulwark_image::TrustPolicy {
        keys,
        threshold: 1,
        min_version: tenant.min_version,
    };
    let bundle = bulwark_image::Bundle::open(path).map_err(|e| {
        Error::new(
            Kind::Unprocessable,
            "image",
            format!("{}: {e}", path.display()),
        )
    })?;
    let verified = bundle.verify(&policy).map_err(|e| {
        Error::new(
            Kind::Unprocessable,
            "image",
            format!(
                "{} failed verification for tenant {}: {e}",
                path.display(),
                tenant.id
            ),
        )
    })?;
    Ok(verified.signed_by().iter().map(hex::encode).collect())
}

/// Enrolls the node's TPM (`attestation.tpm`): its EK certificate's issuers from
/// the configured PEM files, this boot's event log, the AK by credential activation.
fn enroll(t: &crate::config::TpmConfig) -> Result<bulwark_tpm::attester::TpmAttester> {
    let mut chain = Vec::new();
    for (i, p) in t.ek_chain.iter().enumerate() {
        let pem = std::fs::read(p).map_err(|e| {
            Error::new(
                Kind::Unprocessable,
                format!("attestation.tpm.ek_chain[{i}]"),
                format!("{}: {e}", p.display()),
            )
        })?;
        let certs = bulwark_attestation::x509::parse_pem_certificates(&pem).map_err(|e| {
            Error::new(
                Kind::Unprocessable,
                format!("attestation.tpm.ek_chain[{i}]"),
                format!("{}: {e}", p.display()),
            )
        })?;
        chain.extend(certs.into_iter().map(|c| c.der));
    }
    let event_log = match std::fs::read(&t.event_log) {
        Ok(log) => log,
        // No firmware log (a TPM the firmware did not measure into, swtpm): a log of
        // the header alone, which replays only to PCRs nothing was extended into.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bulwark_tpm::eventlog::EventLogWriter::new().into_bytes()
        }
        Err(e) => {
            return Err(Error::internal(
                "attestation.tpm.event_log",
                format!("{}: {e}", t.event_log.display()),
            ))
        }
    };
    let tpm = bulwark_tpm::Tpm::open(&t.tcti)
        .map_err(|e| Error::internal("attestation.tpm.tcti", format!("{}: {e}", t.tcti)))?;
    bulwark_tpm::attester::TpmAttester::enroll(tpm, chain, event_log)
        .map_err(|e| Error::internal("attestation.tpm", format!("enrolling the AK: {e}")))
}

/// `attestation.node_image` as evidence states it: the configured identity, or for
/// `"booted"` the booted slot's verified manifest on `node_update.esp`. A failure is
/// logged and kept as the reason attestation is refused; bulwarkd runs on.
fn resolve_node_image(
    cfg: &Config,
) -> Option<std::result::Result<crate::config::NodeImage, String>> {
    let a = cfg.attestation.as_ref()?;
    Some(match &a.node_image {
        crate::config::NodeImageSource::Stated(n) => Ok(n.clone()),
        crate::config::NodeImageSource::Booted => {
            let r = match &cfg.node_update {
                Some(nu) => crate::node_update::booted_identity(nu, &a.efivars),
                // Config::parse refuses this.
                None => Err("node_update is not configured".into()),
            };
            match &r {
                Ok(n) => tracing::info!(
                    name = %n.name,
                    version = n.version,
                    manifest_sha384 = %n.manifest_sha384,
                    "attestation: the booted node image"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "attestation: the booted node image could not be determined; attestation is refused"
                ),
            }
            r
        }
    })
}
