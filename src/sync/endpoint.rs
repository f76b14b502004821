//! The sides of a sync as they are named (`DIR`, `DIR/`, `REPO`, `REPO::CKPT`, a served
//! `https://HOST/source/NAME[/SUB]`) and the engine each pair goes to: a local directory
//! into a repository is a backup; a served directory into one is a pull; a repository into
//! another is a copy; a checkpoint, a local directory or file, or a served directory into a
//! directory goes through the restore engine, the way rsync would (trailing-slash rule
//! included: `DIR/` syncs the contents, `DIR` the directory itself into `DST/DIR`, a file
//! goes to `DST/FILE`). Opening a repository or reaching a server takes secrets and settings
//! only the caller has, so the caller gives them as an `Opener`.

use super::{SyncOptions, SyncReport, copy};
use crate::backup::{self, BackupOptions};
use crate::checkpoint;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::repo::{Repository, is_local_repository, is_s3, is_url};
use crate::restore::{self, itemize::Change};
use crate::source::OneEntry;
use crate::source::checkpoint::CheckpointSource;
use crate::source::local::{DirectorySource, local_one_entry};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One side of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A local directory (or, as a source, any local entry). `contents`: named with a
    /// trailing `/` (or as `.`, `DIR/.`): its contents are meant, not itself.
    Local { path: PathBuf, contents: bool },
    /// A live directory served by `cairn serve --source` (its URL, without a trailing `/`).
    Served { url: String, contents: bool },
    /// A repository (a directory, a served repository or a bucket), and a checkpoint in it.
    Repository {
        location: PathBuf,
        checkpoint: Option<String>,
    },
}

impl Endpoint {
    /// The side `text` names: `REPO::CKPT` names a checkpoint; a URL with `/source/` a served
    /// directory; a local directory holding a repository's config a repository.
    pub fn parse(text: &str) -> Result<Endpoint> {
        let (location, checkpoint) = match text.rsplit_once("::") {
            Some((location, reference))
                if !reference.is_empty()
                    && reference.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                (location, Some(reference.to_owned()))
            }
            _ => (text, None),
        };
        let repository = |location: &str| Endpoint::Repository {
            location: PathBuf::from(location),
            checkpoint: checkpoint.clone(),
        };
        if is_s3(location) {
            return Ok(repository(location));
        }
        if is_url(location) {
            if location.contains("/source/") && checkpoint.is_none() {
                return Ok(Endpoint::Served {
                    url: location.trim_end_matches('/').to_owned(),
                    contents: location.ends_with('/'),
                });
            }
            return Ok(repository(location));
        }
        let path = PathBuf::from(location);
        if is_local_repository(&path) {
            return Ok(repository(location));
        }
        if checkpoint.is_some() {
            return Err(Error::InvalidInput(format!(
                "{location} is not a cairn repository (it has no config), so {text} names no checkpoint"
            )));
        }
        let contents = text.ends_with('/') || text.ends_with("/.") || text == ".";
        Ok(Endpoint::Local { path, contents })
    }

    /// Whether this side is a repository (what a sync into it writes is packed and indexed).
    pub fn is_repository(&self) -> bool {
        matches!(self, Endpoint::Repository { .. })
    }
}

/// How a sync reaches what its sides name.
pub trait Opener {
    /// The repository at `location` to read from, its reads capped at `receiving` bytes a
    /// second when given.
    fn source_repository(&self, location: &Path, receiving: Option<u64>) -> Result<Repository>;
    /// The repository at `location` to write into (a dry run's view with `dry_run`).
    fn target_repository(&self, location: &Path, dry_run: bool) -> Result<Repository>;
    /// The server of a served source's URL.
    #[cfg(feature = "client")]
    fn remote(&self, url: &str) -> Result<crate::net::client::Remote>;
}

/// One sync between two sides: how they are reached, and what goes with it.
pub struct Transfer<'a> {
    pub opener: &'a dyn Opener,
    pub options: &'a SyncOptions,
    /// Bytes per second read from the source at most, whatever it is.
    pub rate_limit: Option<u64>,
    pub progress: &'a Progress,
    /// Each entry a sync into a directory creates, changes or deletes, with where the
    /// directory it went into is in the destination as named.
    pub changes: &'a mut dyn FnMut(&Path, &Change),
}

impl Transfer<'_> {
    /// Syncs `source` into `destination`.
    pub fn run(&mut self, source: Endpoint, destination: Endpoint) -> Result<SyncReport> {
        let options = self.options;
        match (source, destination) {
            (_, Endpoint::Served { url, .. }) => Err(Error::InvalidInput(format!(
                "{url} is a served source directory: it is read-only, so it can only be a source"
            ))),
            (
                _,
                Endpoint::Repository {
                    checkpoint: Some(reference),
                    location,
                },
            ) => Err(Error::InvalidInput(format!(
                "the destination names a checkpoint: give the repository alone ({}::{reference})",
                location.display()
            ))),
            (Endpoint::Served { url, contents }, destination) => {
                self.served(&url, contents, destination)
            }
            (Endpoint::Local { path, .. }, Endpoint::Repository { location, .. }) => {
                self.backup(&path, &location)
            }
            (
                Endpoint::Repository {
                    location,
                    checkpoint,
                },
                Endpoint::Repository { location: to, .. },
            ) => {
                let from = self.opener.source_repository(&location, self.rate_limit)?;
                let to = self.opener.target_repository(&to, options.dry_run)?;
                let only = match checkpoint {
                    Some(reference) => Some(checkpoint::resolve(&from, &reference)?.id),
                    None => None,
                };
                copy::run(&from, &to, only, options, self.progress)
            }
            (
                Endpoint::Repository {
                    location,
                    checkpoint,
                },
                Endpoint::Local { path: target, .. },
            ) => {
                refuse_overlap(&location, &target)?;
                let repo = self.opener.source_repository(&location, self.rate_limit)?;
                let reference = checkpoint.as_deref().unwrap_or("latest");
                let record = checkpoint::resolve(&repo, reference)?.record;
                let source = CheckpointSource::whole(&repo, &record);
                let root = record.root.as_ref();
                let changes = &mut *self.changes;
                restore::into_dir(
                    &source,
                    record.tree,
                    root,
                    &target,
                    options,
                    self.progress,
                    &mut |change| changes(Path::new(""), change),
                )
            }
            (
                Endpoint::Local { path, contents },
                Endpoint::Local {
                    path: target,
                    contents: into,
                },
            ) => {
                let local = DirectorySource::limited(self.rate_limit);
                let name = path.file_name().filter(|_| !contents);
                match name {
                    None => self.directory(&local, &path, &target, Path::new("")),
                    Some(name) => {
                        let name = name.to_owned();
                        let metadata =
                            std::fs::symlink_metadata(&path).context_io(|| not_a_source(&path))?;
                        if metadata.is_dir() {
                            self.directory(&local, &path, &target.join(&name), Path::new(&name))
                        } else {
                            self.entry(&local, &path, &name, into, &target)
                        }
                    }
                }
            }
        }
    }

    /// Local directory → repository: a backup of `dir`.
    fn backup(&mut self, dir: &Path, location: &Path) -> Result<SyncReport> {
        if !dir.is_dir() {
            return Err(Error::InvalidInput(not_a_source(dir)));
        }
        let mut options = BackupOptions::new(vec![dir.to_owned()]);
        options.read_limit = self.rate_limit;
        let dry_run = self.options.dry_run;
        let opened = || self.opener.target_repository(location, dry_run);
        let outcome = backup::run_opening(opened, &options, self.progress)?;
        Ok(SyncReport::of_backup(outcome, dry_run))
    }

    /// Served directory → repository (a pull) or directory.
    #[cfg(feature = "client")]
    fn served(&mut self, url: &str, contents: bool, destination: Endpoint) -> Result<SyncReport> {
        use crate::net::wire::ChunkSpec;
        use crate::source::remote::RemoteSource;
        let (base, sub) = split_served(url);
        match destination {
            Endpoint::Repository { location, .. } => {
                if !sub.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "{url} names a directory inside a served source: a source is pulled into \
                         a repository whole (give its URL without the path after its name)"
                    )));
                }
                let repo = self
                    .opener
                    .target_repository(&location, self.options.dry_run)?;
                let remote = self.opener.remote(url)?;
                let source = RemoteSource::new(remote, ChunkSpec::of(&repo), false)?
                    .limited(self.rate_limit);
                super::pull::run(&repo, &source, self.options, self.progress)
            }
            Endpoint::Local { path: target, .. } => {
                let remote = self.opener.remote(base)?;
                let source =
                    RemoteSource::new(remote, ChunkSpec::plain(), true)?.limited(self.rate_limit);
                let root = source.stat(sub.as_bytes())?.filter(|e| e.is_dir());
                if root.is_none() && !sub.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "{url} is not a directory: a served source syncs directories"
                    )));
                }
                // Like an rsync daemon's module: the source itself is its contents, a
                // directory in it is that directory unless named with a trailing slash.
                let name = sub
                    .rsplit('/')
                    .next()
                    .filter(|n| !contents && !n.is_empty());
                let (target, prefix) = match name {
                    Some(name) => (target.join(name), PathBuf::from(name)),
                    None => (target, PathBuf::new()),
                };
                let changes = &mut *self.changes;
                restore::into_dir(
                    &source,
                    sub.as_bytes().to_vec(),
                    root.as_ref(),
                    &target,
                    self.options,
                    self.progress,
                    &mut |change| changes(&prefix, change),
                )
            }
            Endpoint::Served { .. } => unreachable!("refused before"),
        }
    }

    #[cfg(not(feature = "client"))]
    fn served(&mut self, url: &str, _: bool, _: Endpoint) -> Result<SyncReport> {
        Err(Error::InvalidInput(format!(
            "{url}: this cairn was built without the `client` feature, so it reaches no server"
        )))
    }

    /// Local directory → directory, refusing a target inside the source (or the other way
    /// round); `prefix` is where `target` is in the destination as named.
    fn directory(
        &mut self,
        local: &DirectorySource,
        dir: &Path,
        target: &Path,
        prefix: &Path,
    ) -> Result<SyncReport> {
        let source = std::fs::canonicalize(dir).context_io(|| not_a_source(dir))?;
        if !source.is_dir() {
            return Err(Error::InvalidInput(not_a_source(dir)));
        }
        refuse_overlap(&source, target)?;
        let root = crate::fs::meta::path_entry(&source, Vec::new())
            .context_io(|| format!("reading {}", source.display()))?
            .ok_or_else(|| {
                Error::InvalidInput(format!("{} is not a directory", source.display()))
            })?;
        let changes = &mut *self.changes;
        restore::into_dir(
            local,
            source,
            Some(&root),
            target,
            self.options,
            self.progress,
            &mut |change| changes(prefix, change),
        )
    }

    /// A file, symlink or special file `path` (named `name`) → `target`: into it when it is
    /// a directory or named with a trailing slash (`into`), else as it, like rsync. Nothing
    /// else in the directory is touched, `--delete` or not.
    fn entry(
        &mut self,
        local: &DirectorySource,
        path: &Path,
        name: &OsString,
        into: bool,
        target: &Path,
    ) -> Result<SyncReport> {
        let into_target = into || std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir());
        let (dir, target_name) = match (into_target, target.file_name()) {
            (false, Some(target_name)) => (
                target.parent().unwrap_or(Path::new("")).to_owned(),
                target_name.to_owned(),
            ),
            _ => (target.to_owned(), name.clone()),
        };
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let source_dir = std::fs::canonicalize(parent.unwrap_or(Path::new(".")))
            .context_io(|| format!("reading {}", path.display()))?;
        let entry = local_one_entry(&source_dir, name)?;
        let source = OneEntry::new(local, source_dir.clone(), entry, target_name.as_bytes())?;
        let resolved = crate::target::resolve_future_path(&dir.join(&target_name))
            .context_io(|| format!("resolving {}", target.display()))?;
        if resolved == source_dir.join(name) {
            return Err(Error::InvalidInput(format!(
                "{} and {} are the same: sync a file to another place",
                path.display(),
                target.display()
            )));
        }
        let options = SyncOptions {
            delete: false,
            ..self.options.clone()
        };
        let changes = &mut *self.changes;
        restore::into_dir(
            &source,
            (),
            None,
            &dir,
            &options,
            self.progress,
            &mut |change| changes(Path::new(""), change),
        )
    }
}

/// The message for a local source that is neither a directory nor a repository.
fn not_a_source(path: &Path) -> String {
    format!("{} is not a directory or a repository", path.display())
}

/// Refuses a target directory inside `source` (a directory or a local repository) or
/// containing it: the sync would read what it writes, or `--delete` what it reads.
fn refuse_overlap(source: &Path, target: &Path) -> Result<()> {
    if source.to_str().is_some_and(|s| is_url(s) || is_s3(s)) {
        return Ok(());
    }
    let source =
        std::fs::canonicalize(source).context_io(|| format!("reading {}", source.display()))?;
    // Where the target will really be: a symlink in a part that exists is followed, the
    // rest is yet to be created.
    let resolved_target = crate::target::resolve_future_path(target)
        .context_io(|| format!("resolving {}", target.display()))?;
    if resolved_target.starts_with(&source) || source.starts_with(&resolved_target) {
        return Err(Error::InvalidInput(format!(
            "{} and {} overlap: sync between places that do not contain each other",
            source.display(),
            target.display()
        )));
    }
    Ok(())
}

/// A served source's URL split into the source's own (`…/source/NAME`) and the path of a
/// directory inside it (empty for the source itself).
#[cfg(feature = "client")]
fn split_served(url: &str) -> (&str, &str) {
    let Some(at) = url.find("/source/") else {
        return (url, "");
    };
    let after = at + "/source/".len();
    match url[after..].find('/') {
        Some(slash) => (
            &url[..after + slash],
            url[after + slash..].trim_matches('/'),
        ),
        None => (url, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_side_is_named_as_rsync_and_cairn_users_name_it() {
        let local = |path: &str, contents| Endpoint::Local {
            path: PathBuf::from(path),
            contents,
        };
        assert_eq!(Endpoint::parse("dir").unwrap(), local("dir", false));
        assert_eq!(Endpoint::parse("dir/").unwrap(), local("dir/", true));
        assert_eq!(Endpoint::parse("dir/.").unwrap(), local("dir/.", true));
        assert_eq!(Endpoint::parse(".").unwrap(), local(".", true));
        assert_eq!(
            Endpoint::parse("https://h:1/source/home/sub/").unwrap(),
            Endpoint::Served {
                url: "https://h:1/source/home/sub".into(),
                contents: true
            }
        );
        assert_eq!(
            Endpoint::parse("s3:https://h/bucket::abcd").unwrap(),
            Endpoint::Repository {
                location: PathBuf::from("s3:https://h/bucket"),
                checkpoint: Some("abcd".into())
            }
        );
        let refused = Endpoint::parse("/no/such/place::latest").unwrap_err();
        assert!(
            refused.to_string().contains("names no checkpoint"),
            "{refused}"
        );
    }

    #[cfg(feature = "client")]
    #[test]
    fn a_served_url_splits_into_its_source_and_the_directory_in_it() {
        assert_eq!(
            split_served("https://h:1/source/home/a/b"),
            ("https://h:1/source/home", "a/b")
        );
        assert_eq!(
            split_served("https://h:1/source/home"),
            ("https://h:1/source/home", "")
        );
    }
}
