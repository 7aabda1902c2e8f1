-- The local catalog: a cache of the repository that lets a backup decide what changed
-- without downloading anything. Never the source of truth: the repository is.

-- Snapshots this catalog has seen committed.
CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),
    parent      TEXT,
    finished_at TEXT NOT NULL
);

-- The file index of the latest snapshot (see src/index.rs).
CREATE TABLE files (
    path     BLOB PRIMARY KEY,
    kind     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    sha256   TEXT,
    archive  TEXT
);

-- 'repository' (the location the catalog belongs to) and 'latest' (a snapshot id).
CREATE TABLE state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
