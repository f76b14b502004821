//! cairn's network protocol, both sides: the client (`client`, every request a client makes
//! goes through it), what crosses (`wire`), and `cairn serve` (`server`: a repository's
//! objects and live source directories). A served repository is used as a `Backend`
//! (`repo::http`); a served source as a tree source (`source::remote`) and a backup's source
//! (`backup::remote`).

pub mod client;
pub mod server;
pub mod wire;
