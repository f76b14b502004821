//! Makes a repository of many small checkpoints for `scripts/bench-scale.sh`: real backups
//! of a small tree that changes before each one (`counter` every time, `docs/notes.txt`
//! once, halfway), made through the library in one process so that thousands take minutes,
//! not hours. Usage: `scale_repo REPO CACHE SOURCE COUNT` (REPO is created, unencrypted).

use cairn::backup::{self, BackupOptions, Progress};
use cairn::repo::backend::LocalBackend;
use cairn::repo::config::EncryptionMode;
use cairn::repo::{InitOptions, Repository, Secret};
use std::path::PathBuf;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [repo, cache, source, count] = args.as_slice() else {
        return Err("usage: scale_repo REPO CACHE SOURCE COUNT".into());
    };
    let count: usize = count.parse()?;
    let source = PathBuf::from(source);
    std::fs::create_dir_all(source.join("docs"))?;
    std::fs::write(source.join("docs/notes.txt"), "the first notes\n")?;
    let backend = Arc::new(LocalBackend::new(repo));
    Repository::init(backend.as_ref(), InitOptions::new(EncryptionMode::None))?;
    let repo = Repository::open(backend, |_| Ok(Secret::None), cache.as_ref())?;
    let mut parent = None;
    for n in 0..count {
        std::fs::write(source.join("counter"), format!("{n}\n"))?;
        if n == count / 2 {
            std::fs::write(source.join("docs/notes.txt"), "the second notes\n")?;
        }
        let mut options = BackupOptions::new(vec![source.clone()]);
        // The parent is the previous checkpoint, as a backup would find it.
        options.parent = parent;
        parent = backup::run(&repo, &options, &Progress::default())?.id;
    }
    Ok(())
}
