//! `cairn init`: creates a repository in password (default), keyfile or none mode, on its own
//! or `--like` another one (shared blob ids, so sync copies blobs between them as they are).

use super::GlobalArgs;
use anyhow::{Result, bail};
use cairn::repo::config::EncryptionMode;
use cairn::repo::{InitOptions, Repository};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Encryption {
    /// A password wraps the key (stored in the repository)
    Password,
    /// The key lives in a file you keep (--key-file)
    Keyfile,
    /// No encryption
    None,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// How to protect the repository
    #[arg(long, value_enum, default_value = "password")]
    encryption: Encryption,
    /// zstd compression level (1-22; with --like, that repository's)
    #[arg(long, default_value_t = cairn::repo::config::DEFAULT_COMPRESSION_LEVEL)]
    compression_level: i32,
    /// Give blobs the same ids and chunks as this repository (same chunker and id key, own
    /// encryption key and password), so `cairn sync` copies between them as they are
    #[arg(long, value_name = "REPO")]
    like: Option<PathBuf>,
    #[command(flatten)]
    like_credentials: super::FromCredentials,
}

pub fn run(global: &GlobalArgs, args: InitArgs) -> Result<ExitCode> {
    let path = global.repo_path()?;
    if let Ok(mut entries) = std::fs::read_dir(path)
        && entries.next().is_some()
        && !path.join(cairn::repo::objects::CONFIG).exists()
    {
        bail!(
            "{} is not empty: create the repository in a new or empty directory",
            path.display()
        );
    }
    let backend = global.backend()?;
    let encryption = match args.encryption {
        Encryption::Password => EncryptionMode::Password,
        Encryption::Keyfile => EncryptionMode::Keyfile,
        Encryption::None => EncryptionMode::None,
    };
    let mut options = match &args.like {
        Some(like) => {
            let like = global.open_at(like, args.like_credentials.resolve(global))?;
            InitOptions::like(encryption, &like)?
        }
        None => InitOptions {
            compression_level: args.compression_level,
            ..InitOptions::new(encryption)
        },
    };
    match encryption {
        EncryptionMode::Password => options.password = Some(global.password(true)?),
        EncryptionMode::Keyfile => {
            let Some(key_file) = &global.key_file else {
                bail!("keyfile mode needs --key-file FILE: the new key is written there");
            };
            options.key_file = Some(key_file.clone());
        }
        EncryptionMode::None => {}
    }
    let config = Repository::init(backend.as_ref(), options)?;
    errln!(
        "created cairn repository {} at {} (encryption: {encryption})",
        &config.id[..8],
        path.display()
    );
    match encryption {
        EncryptionMode::Password => {
            errln!("remember the password: without it the backups cannot be read")
        }
        EncryptionMode::Keyfile => errln!(
            "key written to {}: keep a copy somewhere safe; without it the backups cannot be read",
            global.key_file.as_ref().expect("checked above").display()
        ),
        EncryptionMode::None => errln!("warning: the repository is not encrypted"),
    }
    Ok(ExitCode::SUCCESS)
}
