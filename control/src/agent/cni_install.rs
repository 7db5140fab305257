//! Installing `podfence-cni` on the node: the binary into the CNI binary
//! directory, and an entry chaining it into the network configuration the
//! runtime uses; and removing both.
//!
//! The runtime (containerd, CRI-O) uses the first file of the
//! configuration directory, by name, ending in `.conflist`, `.conf` or
//! `.json`. A list gets the entry appended to its plugins (after the one
//! that wires the pod, and after portmap and the like, which pass the
//! result on); a single-plugin `.conf` becomes a `.conflist` of that plugin
//! and the entry. An entry already there is brought up to date; the file
//! is rewritten only when it changes. Files are written beside their final
//! name under a name the runtime ignores and renamed into place, so the
//! runtime never reads half a file. The network plugin's own daemon may
//! rewrite its file (kindnet does at start): the agent calls
//! [`CniInstall::install`] again every few seconds.
//!
//! Removal takes the entry out of every configuration of the directory,
//! then the binary.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// The plugin's `type`, and its binary's name.
pub const PLUGIN: &str = "podfence-cni";

/// Where and what to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniInstall {
    /// The node's CNI binary directory (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The binary to install.
    pub plugin: PathBuf,
    /// The agent's control socket, as the node sees it.
    pub control_socket: PathBuf,
    /// `closed` or `open` (the entry's `failMode`).
    pub fail_mode: String,
}

/// Why installing or removing failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A network configuration is not JSON of a configuration.
    #[error("{path}: not a CNI network configuration: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The directory has no network configuration (yet).
    #[error("no CNI network configuration in {0} (is the network plugin installed?)")]
    NoConfig(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What [`CniInstall::install`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// The binary was copied (it was missing or different).
    pub binary: bool,
    /// The configuration chaining it, and whether it was rewritten.
    pub config: (PathBuf, bool),
}

impl CniInstall {
    /// Installs the binary, then chains it (see the module doc).
    pub fn install(&self) -> Result<Installed, InstallError> {
        let path = first_config(&self.conf_dir)?;
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let mut value: Value = serde_json::from_str(&text).map_err(|e| InstallError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let single = value.get("plugins").is_none();
        if single {
            value = as_list(value).map_err(|message| InstallError::Parse {
                path: path.clone(),
                message,
            })?;
        }
        let changed = chain(&mut value, self.entry()).map_err(|message| InstallError::Parse {
            path: path.clone(),
            message,
        })?;
        // The binary before the entry that makes the runtime run it.
        let binary = self.install_binary()?;
        if !single {
            if changed {
                write_atomically(&path, &value)?;
            }
            return Ok(Installed {
                binary,
                config: (path, changed),
            });
        }
        // A .conf becomes a .conflist of the same name, in its place.
        let list = path.with_extension("conflist");
        write_atomically(&list, &value)?;
        if list != path {
            fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(Installed {
            binary,
            config: (list, true),
        })
    }

    /// Removes the entry from every configuration of the directory, then
    /// the binary. Missing ones are not an error.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut changed = Vec::new();
        for path in configs(&self.conf_dir)? {
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(mut value) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if unchain(&mut value) {
                write_atomically(&path, &value)?;
                changed.push(path);
            }
        }
        let binary = self.bin_dir.join(PLUGIN);
        match fs::remove_file(&binary) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&binary)(e));
            }
            _ => {}
        }
        Ok(changed)
    }

    /// The entry chained into the list.
    #[must_use]
    pub fn entry(&self) -> Value {
        json!({
            "type": PLUGIN,
            "controlSocket": self.control_socket,
            "failMode": self.fail_mode,
        })
    }

    /// Copies the binary when the installed one is missing or differs.
    fn install_binary(&self) -> Result<bool, InstallError> {
        let target = self.bin_dir.join(PLUGIN);
        let new = fs::read(&self.plugin).map_err(io(&self.plugin))?;
        if fs::read(&target).is_ok_and(|old| old == new) {
            return Ok(false);
        }
        fs::create_dir_all(&self.bin_dir).map_err(io(&self.bin_dir))?;
        let staging = self.bin_dir.join(format!(".{PLUGIN}.podfence-new"));
        fs::write(&staging, &new).map_err(io(&staging))?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
                .map_err(io(&staging))?;
        }
        // A rename replaces the file a runtime may be executing without
        // touching its contents.
        fs::rename(&staging, &target).map_err(io(&target))?;
        Ok(true)
    }
}

/// The network configurations of `dir`, by name (the runtime's order).
fn configs(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if matches!(ext, Some("conf" | "conflist" | "json")) && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The configuration the runtime uses.
fn first_config(dir: &Path) -> Result<PathBuf, InstallError> {
    configs(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(dir.to_owned()))
}

/// A single plugin's configuration as a list of it.
fn as_list(mut single: Value) -> Result<Value, String> {
    let object = single
        .as_object_mut()
        .ok_or("the configuration is not an object")?;
    let name = object.remove("name").unwrap_or(Value::Null);
    let version = object
        .remove("cniVersion")
        .ok_or("the configuration has no cniVersion")?;
    if !object.contains_key("type") {
        return Err("the configuration has no type".into());
    }
    let mut list = Map::new();
    list.insert("cniVersion".into(), version);
    list.insert("name".into(), name);
    list.insert("plugins".into(), Value::Array(vec![single]));
    Ok(Value::Object(list))
}

/// Puts `entry` at the end of the list's plugins, replacing an earlier
/// entry of ours; returns whether the list changed.
fn chain(list: &mut Value, entry: Value) -> Result<bool, String> {
    let plugins = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("the list has no plugins array")?;
    if plugins.last() == Some(&entry) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
        return Ok(false);
    }
    plugins.retain(|p| !is_ours(p));
    if plugins.is_empty() {
        return Err("the list has no plugin to chain after".into());
    }
    plugins.push(entry);
    Ok(true)
}

/// Takes our entries out of a list; returns whether there were any.
fn unchain(list: &mut Value) -> bool {
    let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = plugins.len();
    plugins.retain(|p| !is_ours(p));
    plugins.len() != before
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN)
}

fn write_atomically(path: &Path, value: &Value) -> Result<(), InstallError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Not a .conf/.conflist/.json name: the runtime ignores it.
    let staging = path.with_file_name(format!(".{name}.podfence-new"));
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize") + "\n";
    fs::write(&staging, text).map_err(io(&staging))?;
    fs::rename(&staging, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn node(tag: &str) -> (Dir, CniInstall) {
        let root =
            std::env::temp_dir().join(format!("podfence-cni-install-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("net.d")).unwrap();
        fs::write(root.join("plugin"), b"#!/bin/sh\n").unwrap();
        let install = CniInstall {
            bin_dir: root.join("bin"),
            conf_dir: root.join("net.d"),
            plugin: root.join("plugin"),
            control_socket: "/run/podfence/control.sock".into(),
            fail_mode: "closed".into(),
        };
        (Dir(root), install)
    }

    const KINDNET: &str = r#"{"cniVersion": "0.3.1", "name": "kindnet", "plugins": [
        {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

    fn read(path: &Path) -> Value {
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_list_gets_the_entry_last_once_and_loses_it_on_removal() {
        let (_dir, install) = node("list");
        let list = install.conf_dir.join("10-kindnet.conflist");
        fs::write(&list, KINDNET).unwrap();
        fs::write(install.conf_dir.join("20-other.conflist"), KINDNET).unwrap();
        let done = install.install().unwrap();
        assert_eq!(
            done,
            Installed {
                binary: true,
                config: (list.clone(), true)
            }
        );
        let chained = read(&list);
        assert_eq!(chained["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(chained["plugins"][2], install.entry());
        assert_eq!(chained["plugins"][0]["type"], "ptp");
        assert_eq!(
            read(&install.conf_dir.join("20-other.conflist"))["plugins"]
                .as_array()
                .unwrap()
                .len(),
            2,
            "only the first file"
        );
        // Again: nothing to do.
        assert_eq!(
            install.install().unwrap(),
            Installed {
                binary: false,
                config: (list.clone(), false)
            }
        );
        // Settings changed: the entry is replaced, not added.
        let open = CniInstall {
            fail_mode: "open".into(),
            ..install.clone()
        };
        assert!(open.install().unwrap().config.1);
        let plugins = read(&list)["plugins"].as_array().unwrap().clone();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2]["failMode"], "open");
        // Removal restores the list and removes the binary.
        assert_eq!(install.uninstall().unwrap(), std::slice::from_ref(&list));
        assert_eq!(read(&list), serde_json::from_str::<Value>(KINDNET).unwrap());
        assert!(!install.bin_dir.join(PLUGIN).exists());
        assert!(install.uninstall().unwrap().is_empty(), "idempotent");
        let leftovers: Vec<_> = fs::read_dir(&install.conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn a_single_plugin_becomes_a_list() {
        let (_dir, install) = node("single");
        let conf = install.conf_dir.join("10-bridge.conf");
        fs::write(
            &conf,
            r#"{"cniVersion": "1.0.0", "name": "br", "type": "bridge", "bridge": "cni0"}"#,
        )
        .unwrap();
        let done = install.install().unwrap();
        let list = install.conf_dir.join("10-bridge.conflist");
        assert_eq!(done.config, (list.clone(), true));
        assert!(!conf.exists());
        let value = read(&list);
        assert_eq!(value["name"], "br");
        assert_eq!(value["cniVersion"], "1.0.0");
        assert_eq!(
            value["plugins"][0],
            json!({"type": "bridge", "bridge": "cni0"})
        );
        assert_eq!(value["plugins"][1]["type"], PLUGIN);
    }

    #[test]
    fn no_or_bad_configuration_is_an_error_and_changes_nothing() {
        let (_dir, install) = node("bad");
        assert!(matches!(install.install(), Err(InstallError::NoConfig(_))));
        let bad = install.conf_dir.join("05-bad.conflist");
        fs::write(&bad, "{not json").unwrap();
        assert!(matches!(install.install(), Err(InstallError::Parse { .. })));
        assert_eq!(fs::read_to_string(&bad).unwrap(), "{not json");
        fs::write(
            &bad,
            r#"{"cniVersion": "1.0.0", "name": "n", "plugins": []}"#,
        )
        .unwrap();
        assert!(matches!(install.install(), Err(InstallError::Parse { .. })));
        assert!(!install.bin_dir.join(PLUGIN).exists(), "nothing installed");
    }
}
