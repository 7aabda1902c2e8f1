-- A backup skips Signal's database when nothing wrote to it since the last snapshot: the
-- row of the database records what its files looked like (src/signal_db.rs, `Stamp`).
ALTER TABLE files ADD COLUMN db_stamp TEXT;
