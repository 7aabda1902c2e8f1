-- Signal's database is backed up as page deltas (src/pages.rs). Its row records how the
-- snapshot rebuilds it (JSON: the delta snapshots, the page-list digest), and the catalog
-- keeps the page list of the latest snapshot's database, by digest, to take the next
-- delta against.
ALTER TABLE files ADD COLUMN db_chain TEXT;
CREATE TABLE page_lists (
    digest TEXT PRIMARY KEY,
    list   BLOB NOT NULL
);
