//! The state database: one redb file (`<state-dir>/bulwarkd.db`). Every state change
//! is one write transaction, durable at commit, so a SIGKILL at any instant leaves
//! either the state before or the state after it. Rows are JSON values keyed by id.
//! The schema is versioned (`meta.schema_version`) and every applied migration is
//! listed in the `migrations` table.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Device, NodeState, ScrubRecord, Tenancy, Tenant, Vm};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const MIGRATIONS: TableDefinition<u32, &str> = TableDefinition::new("migrations");
const DEVICES: TableDefinition<&str, &str> = TableDefinition::new("devices");
const TENANTS: TableDefinition<&str, &str> = TableDefinition::new("tenants");
const VMS: TableDefinition<&str, &str> = TableDefinition::new("vms");
const NODE: TableDefinition<&str, &str> = TableDefinition::new("node");
const SCRUBS: TableDefinition<u64, &str> = TableDefinition::new("scrubs");
/// What each VM's guest reported on its channel (`guest::GuestView`, JSON).
const GUEST_REPORTS: TableDefinition<&str, &str> = TableDefinition::new("guest_reports");

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 2;

type Migration = fn(&redb::WriteTransaction) -> std::result::Result<(), Box<redb::Error>>;

/// Migration n takes the schema from version n-1 to n.
const MIGRATIONS_LIST: [(u32, &str, Migration); 2] = [
    (
        1,
        "initial tables: devices, tenants, vms, node, scrubs",
        migrate_1,
    ),
    (
        2,
        "guest_reports: what each VM's guest reported, kept across restarts",
        migrate_2,
    ),
];

fn migrate_2(tx: &redb::WriteTransaction) -> std::result::Result<(), Box<redb::Error>> {
    tx.open_table(GUEST_REPORTS)
        .map_err(|e| Box::new(redb::Error::from(e)))?;
    Ok(())
}

fn migrate_1(tx: &redb::WriteTransaction) -> std::result::Result<(), Box<redb::Error>> {
    let e = |e: redb::TableError| Box::new(redb::Error::from(e));
    tx.open_table(DEVICES).map_err(e)?;
    tx.open_table(TENANTS).map_err(e)?;
    tx.open_table(VMS).map_err(e)?;
    tx.open_table(NODE).map_err(e)?;
    tx.open_table(SCRUBS).map_err(e)?;
    Ok(())
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::internal("storage", format!("state database: {e}"))
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(storage)
}

fn from_json<T: DeserializeOwned>(table: &str, key: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| storage(format!("row {table}/{key} is corrupt: {e}")))
}

/// The open database.
#[derive(Debug)]
pub struct Store {
    path: std::path::PathBuf,
    /// `None` only after a failed reopen (the next operation tries again).
    db: std::sync::RwLock<Option<Database>>,
}

/// One write transaction: the whole `NodeState` to change, plus scrub records.
#[derive(Debug)]
pub struct Txn {
    pub state: NodeState,
    scrubs: Vec<ScrubRecord>,
    next_scrub: u64,
}

impl Txn {
    /// Writes (inserts or replaces) a scrub record at commit.
    pub fn put_scrub(&mut self, r: ScrubRecord) {
        self.scrubs.retain(|s| s.id != r.id);
        self.scrubs.push(r);
    }
    /// A fresh scrub record id.
    pub fn new_scrub_id(&mut self) -> u64 {
        self.next_scrub += 1;
        self.next_scrub
    }
}

fn load_map<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static str>,
    name: &str,
) -> Result<std::collections::BTreeMap<String, T>> {
    let mut out = std::collections::BTreeMap::new();
    for row in table.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        out.insert(
            k.value().to_string(),
            from_json(name, k.value(), v.value())?,
        );
    }
    Ok(out)
}

fn load_state(
    devices: &impl ReadableTable<&'static str, &'static str>,
    tenants: &impl ReadableTable<&'static str, &'static str>,
    vms: &impl ReadableTable<&'static str, &'static str>,
    node: &impl ReadableTable<&'static str, &'static str>,
) -> Result<NodeState> {
    let tenancy = match node.get("tenancy").map_err(storage)? {
        Some(v) => from_json("node", "tenancy", v.value())?,
        None => Tenancy::default(),
    };
    Ok(NodeState {
        devices: load_map(devices, "devices")?,
        tenants: load_map(tenants, "tenants")?,
        vms: load_map(vms, "vms")?,
        tenancy,
    })
}

fn sync_map<T: Serialize + PartialEq>(
    table: &mut redb::Table<&'static str, &'static str>,
    old: &std::collections::BTreeMap<String, T>,
    new: &std::collections::BTreeMap<String, T>,
) -> Result<()> {
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        table.remove(k.as_str()).map_err(storage)?;
    }
    for (k, v) in new {
        if old.get(k) != Some(v) {
            table
                .insert(k.as_str(), to_json(v)?.as_str())
                .map_err(storage)?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens or creates the database and brings its schema to `SCHEMA_VERSION`.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path)
            .map_err(|e| storage(format!("opening {}: {e}", path.display())))?;
        let store = Store {
            path: path.to_path_buf(),
            db: std::sync::RwLock::new(Some(db)),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `f` on the open database.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let g = self.db.read().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(db) => f(db),
            None => Err(storage(
                "the database is closed after an I/O error and could not be reopened yet",
            )),
        }
    }

    /// After a failed write: redb refuses every later write once an I/O error (a full
    /// disk, say) hit a commit, until the database is reopened. Reopen it, so writes
    /// work again once the cause is gone (the failed transaction left nothing).
    fn recover_after_error(&self) {
        let poisoned = {
            let g = self.db.read().unwrap_or_else(|e| e.into_inner());
            match g.as_ref() {
                None => true,
                Some(db) => matches!(
                    db.begin_write(),
                    Err(redb::TransactionError::Storage(
                        redb::StorageError::PreviousIo
                    ))
                ),
            }
        };
        if !poisoned {
            return;
        }
        let mut g = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(g.take());
        match Database::create(&self.path) {
            Ok(db) => {
                tracing::warn!(path = %self.path.display(), "state database reopened after an I/O error");
                *g = Some(db);
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "state database could not be reopened")
            }
        }
    }

    /// The schema version in the file and the applied migrations.
    pub fn schema(&self) -> Result<(u32, Vec<(u32, String)>)> {
        self.with(Self::schema_of)
    }

    fn schema_of(db: &Database) -> Result<(u32, Vec<(u32, String)>)> {
        let tx = db.begin_read().map_err(storage)?;
        let version = match tx.open_table(META) {
            Ok(t) => t
                .get("schema_version")
                .map_err(storage)?
                .map(|v| v.value().parse::<u32>().map_err(storage))
                .transpose()?
                .unwrap_or(0),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(storage(e)),
        };
        let mut applied = Vec::new();
        if let Ok(t) = tx.open_table(MIGRATIONS) {
            for row in t.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                applied.push((k.value(), v.value().to_string()));
            }
        }
        Ok((version, applied))
    }

    fn migrate(&self) -> Result<()> {
        let (version, _) = self.schema()?;
        if version > SCHEMA_VERSION {
            return Err(storage(format!(
                "schema version {version} is newer than this bulwarkd supports ({SCHEMA_VERSION}); refusing to touch it"
            )));
        }
        for (to, what, run) in MIGRATIONS_LIST {
            if to <= version {
                continue;
            }
            // Each migration, its record and the version bump commit together.
            let tx = self.with(|db| db.begin_write().map_err(storage))?;
            run(&tx).map_err(|e| storage(format!("migration {to} ({what}): {e}")))?;
            {
                let mut m = tx.open_table(MIGRATIONS).map_err(storage)?;
                let rec = serde_json::json!({ "description": what, "applied_at_ms": crate::model::now_ms() }).to_string();
                m.insert(to, rec.as_str()).map_err(storage)?;
                let mut meta = tx.open_table(META).map_err(storage)?;
                meta.insert("schema_version", to.to_string().as_str())
                    .map_err(storage)?;
            }
            tx.commit().map_err(storage)?;
            tracing::info!(version = to, what, "applied database migration");
        }
        Ok(())
    }

    /// A consistent snapshot of the state.
    pub fn load(&self) -> Result<NodeState> {
        let tx = self.with(|db| db.begin_read().map_err(storage))?;
        load_state(
            &tx.open_table(DEVICES).map_err(storage)?,
            &tx.open_table(TENANTS).map_err(storage)?,
            &tx.open_table(VMS).map_err(storage)?,
            &tx.open_table(NODE).map_err(storage)?,
        )
    }

    /// Runs `f` on the current state in one write transaction; commits what it
    /// changed if it returns `Ok`, changes nothing if it returns `Err`.
    pub fn update<T>(&self, f: impl FnOnce(&mut Txn) -> Result<T>) -> Result<T> {
        let r = self.update_once(f);
        if matches!(&r, Err(e) if e.field == "storage") {
            self.recover_after_error();
        }
        r
    }

    fn update_once<T>(&self, f: impl FnOnce(&mut Txn) -> Result<T>) -> Result<T> {
        let tx = self.with(|db| db.begin_write().map_err(storage))?;
        let out;
        {
            let mut devices = tx.open_table(DEVICES).map_err(storage)?;
            let mut tenants = tx.open_table(TENANTS).map_err(storage)?;
            let mut vms = tx.open_table(VMS).map_err(storage)?;
            let mut node = tx.open_table(NODE).map_err(storage)?;
            let mut scrubs = tx.open_table(SCRUBS).map_err(storage)?;
            let old = load_state(&devices, &tenants, &vms, &node)?;
            let next_scrub = scrubs
                .last()
                .map_err(storage)?
                .map_or(0, |(k, _)| k.value());
            let mut txn = Txn {
                state: old.clone(),
                scrubs: Vec::new(),
                next_scrub,
            };
            out = f(&mut txn)?;
            sync_map::<Device>(&mut devices, &old.devices, &txn.state.devices)?;
            sync_map::<Tenant>(&mut tenants, &old.tenants, &txn.state.tenants)?;
            sync_map::<Vm>(&mut vms, &old.vms, &txn.state.vms)?;
            if old.tenancy != txn.state.tenancy {
                node.insert("tenancy", to_json(&txn.state.tenancy)?.as_str())
                    .map_err(storage)?;
            }
            for r in &txn.scrubs {
                scrubs.insert(r.id, to_json(r)?.as_str()).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;
        Ok(out)
    }

    /// Scrub records, oldest first; only `device`'s when given.
    pub fn scrubs(&self, device: Option<&str>) -> Result<Vec<ScrubRecord>> {
        let tx = self.with(|db| db.begin_read().map_err(storage))?;
        let t = tx.open_table(SCRUBS).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let r: ScrubRecord = from_json("scrubs", &k.value().to_string(), v.value())?;
            if device.is_none_or(|d| d == r.device) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// One scrub record.
    pub fn scrub(&self, id: u64) -> Result<Option<ScrubRecord>> {
        let tx = self.with(|db| db.begin_read().map_err(storage))?;
        let t = tx.open_table(SCRUBS).map_err(storage)?;
        let r = t.get(id).map_err(storage)?;
        r.map(|v| from_json("scrubs", &id.to_string(), v.value()))
            .transpose()
    }

    /// Stores what VM `vm`'s guest reported (replacing the previous report).
    pub fn put_guest_report(&self, vm: &str, json: &str) -> Result<()> {
        let tx = self.with(|db| db.begin_write().map_err(storage))?;
        tx.open_table(GUEST_REPORTS)
            .map_err(storage)?
            .insert(vm, json)
            .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// What VM `vm`'s guest reported, as stored.
    pub fn guest_report(&self, vm: &str) -> Result<Option<String>> {
        let tx = self.with(|db| db.begin_read().map_err(storage))?;
        let t = tx.open_table(GUEST_REPORTS).map_err(storage)?;
        let r = t.get(vm).map_err(storage)?;
        Ok(r.map(|v| v.value().to_string()))
    }

    /// Forgets VM `vm`'s guest report (the VM is deleted).
    pub fn delete_guest_report(&self, vm: &str) -> Result<()> {
        let tx = self.with(|db| db.begin_write().map_err(storage))?;
        tx.open_table(GUEST_REPORTS)
            .map_err(storage)?
            .remove(vm)
            .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// Number of scrub records.
    pub fn scrub_count(&self) -> Result<u64> {
        let tx = self.with(|db| db.begin_read().map_err(storage))?;
        tx.open_table(SCRUBS)
            .map_err(storage)?
            .len()
            .map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ScrubOutcome, Tenant};

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            signer_keys: vec!["k".into()],
            min_version: 3,
        }
    }

    #[test]
    fn fresh_database_is_at_the_current_schema_with_its_migration_listed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("bulwarkd.db")).unwrap();
        let (v, applied) = s.schema().unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        assert_eq!(applied.len(), MIGRATIONS_LIST.len());
        assert!(applied[0].1.contains("initial tables"), "{applied:?}");
        assert_eq!(s.load().unwrap(), NodeState::default());
    }

    #[test]
    fn committed_changes_survive_reopen_and_failed_ones_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwarkd.db");
        {
            let s = Store::open(&path).unwrap();
            s.update(|t| {
                t.state.tenants.insert("a".into(), tenant("a"));
                t.state.tenancy.owner = Some("a".into());
                let id = t.new_scrub_id();
                t.put_scrub(ScrubRecord {
                    id,
                    device: "0000:01:00.0".into(),
                    started_at_ms: 1,
                    finished_at_ms: None,
                    steps: vec![],
                    outcome: ScrubOutcome::InProgress,
                    reason: None,
                });
                Ok(())
            })
            .unwrap();
            let e = s
                .update(|t| {
                    t.state.tenants.insert("b".into(), tenant("b"));
                    let id = t.new_scrub_id();
                    t.put_scrub(ScrubRecord {
                        id,
                        device: "x".into(),
                        started_at_ms: 1,
                        finished_at_ms: None,
                        steps: vec![],
                        outcome: ScrubOutcome::InProgress,
                        reason: None,
                    });
                    Err::<(), _>(Error::conflict("x", "no"))
                })
                .unwrap_err();
            assert_eq!(e.field, "x");
        }
        let s = Store::open(&path).unwrap();
        let st = s.load().unwrap();
        assert_eq!(st.tenants.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(st.tenancy.owner.as_deref(), Some("a"));
        assert_eq!(s.scrub_count().unwrap(), 1);
        assert_eq!(s.scrub(1).unwrap().unwrap().device, "0000:01:00.0");
        assert_eq!(s.scrubs(Some("0000:01:00.0")).unwrap().len(), 1);
        assert!(s.scrubs(Some("nope")).unwrap().is_empty());
        // Ids keep counting after a reopen; removal is written too.
        s.update(|t| {
            assert_eq!(t.new_scrub_id(), 2);
            t.state.tenants.remove("a");
            Ok(())
        })
        .unwrap();
        assert!(s.load().unwrap().tenants.is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwarkd.db");
        drop(Store::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", "99")
                .unwrap();
            tx.commit().unwrap();
        }
        let e = Store::open(&path).unwrap_err();
        assert!(e.message.contains("schema version 99"), "{e}");
    }

    #[test]
    fn a_corrupt_row_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwarkd.db");
        drop(Store::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(VMS)
                .unwrap()
                .insert("v", "{not json")
                .unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(&path).unwrap();
        let e = s.load().unwrap_err();
        assert!(e.message.contains("vms/v is corrupt"), "{e}");
    }
}
