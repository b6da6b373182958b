//! Kernel modules of the unpacked kernel package: finding them by name and putting
//! them in load order, from each module's own `.modinfo` `depends=` list (Debian's
//! package ships no `modules.dep`; that is made by `depmod` at install time).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use super::error::{LabError, Result};

/// The modules directory (`lib/modules/RELEASE`) of an unpacked kernel package.
#[derive(Debug)]
pub struct ModuleTree {
    dir: PathBuf,
    files: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

/// Module names use `-` and `_` interchangeably; the kernel treats them as the same.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleTree {
    /// Indexes the `.ko` files and the built-in module list under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files = HashMap::new();
        let mut pending = vec![dir.join("kernel")];
        while let Some(d) = pending.pop() {
            for entry in
                fs::read_dir(&d).map_err(LabError::io(format!("listing {}", d.display())))?
            {
                let path = entry
                    .map_err(LabError::io(format!("listing {}", d.display())))?
                    .path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Some(stem) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    files.insert(canonical_name(stem), path.clone());
                }
            }
        }
        let builtin_list = dir.join("modules.builtin");
        let builtin = fs::read_to_string(&builtin_list)
            .map_err(LabError::io(format!("reading {}", builtin_list.display())))?
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
            .map(canonical_name)
            .collect();
        Ok(ModuleTree {
            dir: dir.to_owned(),
            files,
            builtin,
        })
    }

    /// The module files to `insmod`, in order, so that `wanted` are loaded with
    /// everything they depend on first. Built-in modules are left out.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            self.visit(
                &canonical_name(name),
                "the scenario",
                &mut Vec::new(),
                &mut done,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        path: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(LabError::ModuleCycle(name.to_owned()));
        }
        let Some(file) = self.files.get(name) else {
            if self.builtin.contains(name) {
                done.insert(name.to_owned());
                return Ok(());
            }
            return Err(LabError::MissingModule {
                module: name.to_owned(),
                needed_by: needed_by.to_owned(),
                tree: self.dir.clone(),
            });
        };
        path.push(name.to_owned());
        for dep in module_depends(file)? {
            self.visit(&canonical_name(&dep), name, path, done, order)?;
        }
        path.pop();
        done.insert(name.to_owned());
        order.push(file.clone());
        Ok(())
    }
}

/// The `depends=` list of a module file's `.modinfo` section.
pub fn module_depends(file: &Path) -> Result<Vec<String>> {
    let bad = |reason: String| LabError::BadModule {
        path: file.to_owned(),
        reason,
    };
    let data = fs::read(file).map_err(LabError::io(format!("reading {}", file.display())))?;
    let elf = object::File::parse(&*data).map_err(|e| bad(e.to_string()))?;
    let section = elf
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo section".into()))?;
    let info = section.data().map_err(|e| bad(e.to_string()))?;
    Ok(parse_depends(info))
}

/// Module names from the NUL-separated `key=value` records of a `.modinfo` section.
fn parse_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .filter_map(|record| record.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_are_read_from_modinfo_records() {
        let info = b"license=GPL\0depends=vfio,irqbypass\0vermagic=6.1\0";
        assert_eq!(parse_depends(info), ["vfio", "irqbypass"]);
        assert!(parse_depends(b"license=GPL\0depends=\0").is_empty());
    }

    #[test]
    fn module_names_treat_dash_and_underscore_alike() {
        assert_eq!(canonical_name("vfio-pci-core"), "vfio_pci_core");
    }

    #[test]
    fn a_non_elf_module_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("lab-modules-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("broken.ko");
        fs::write(&file, b"not an ELF file").unwrap();
        let err = module_depends(&file).unwrap_err().to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("broken.ko"), "{err}");
    }
}
