//! What this machine remembers of each repository it has opened: the `Settings` its config
//! stated the first time, kept beside the index cache in `<cache root>/<id>/settings.json`. A
//! later open whose config states other settings — turned to `none`, another chunker or
//! compression, an older format — is refused. This protects the repositories no key can
//! vouch for (every `none` repository, and encrypted ones whose config predates the sealed
//! settings of format 2) once this machine has seen them (invariant 8). Unlike the index cache
//! this file is not rebuilt from the repository: deleting it means trusting the repository's
//! config as it is now.

use super::backend::create_private_dir;
use super::config::Settings;
use crate::error::{Error, IoContext, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file of the remembered settings inside a repository's cache directory.
const SETTINGS_FILE_NAME: &str = "settings.json";

/// The settings remembered for one repository id.
pub(crate) struct RememberedSettings {
    path: PathBuf,
}

impl RememberedSettings {
    /// The settings remembered in `repository_cache` (`<cache root>/<id>`).
    pub(crate) fn at(repository_cache: &Path) -> Self {
        RememberedSettings {
            path: repository_cache.join(SETTINGS_FILE_NAME),
        }
    }

    fn read(&self) -> Result<Option<Settings>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", self.path.display()), e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Cache {
                path: self.path.clone(),
                message: format!(
                    "{e}: the remembered settings of this repository cannot be read; delete \
                     the file to trust the repository's config as it is now"
                ),
            })
    }

    /// Fails when this machine remembers other settings for the repository than `now`.
    pub(crate) fn check(&self, now: &Settings, location: &str) -> Result<()> {
        let Some(remembered) = self.read()? else {
            return Ok(());
        };
        let changes = remembered.changes_to(now);
        if changes.is_empty() {
            return Ok(());
        }
        Err(Error::Tampered {
            repository: location.to_owned(),
            what: format!(
                "its config changed since this machine first opened it ({}); cairn never \
                 changes a config, so if you trust the repository as it is now, delete {}",
                changes.join(", "),
                self.path.display()
            ),
        })
    }

    /// Records `settings` unless settings are remembered already.
    pub(crate) fn remember(&self, settings: &Settings) -> Result<()> {
        if self.read()?.is_some() {
            return Ok(());
        }
        let dir = self.path.parent().expect("the file is inside a directory");
        create_private_dir(dir)?;
        let temp = dir.join(format!(".{SETTINGS_FILE_NAME}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&serde_json::to_vec_pretty(settings).expect("settings serialize"))?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        };
        write().context_io(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;
    use crate::repo::config::EncryptionMode;

    #[test]
    fn the_first_settings_seen_are_kept_and_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let remembered = RememberedSettings::at(&dir.path().join("id"));
        let first = Settings {
            cairn_repository: 2,
            id: "ab".repeat(32),
            created: "2026-12-01T00:00:00Z".into(),
            chunker: ChunkerParams::default(),
            compression_level: 3,
            encryption: EncryptionMode::Password,
        };
        remembered.check(&first, "repo").unwrap();
        remembered.remember(&first).unwrap();
        let downgraded = Settings {
            encryption: EncryptionMode::None,
            ..first.clone()
        };
        remembered.remember(&downgraded).unwrap();
        let refused = remembered.check(&downgraded, "repo").unwrap_err();
        assert!(
            refused.to_string().contains("encryption password -> none"),
            "{refused}"
        );
        remembered.check(&first, "repo").unwrap();
    }
}
