-- Chains of incrementals are bounded: a new full snapshot every N incrementals or after a
-- maximum age. Record where each snapshot sits in its chain.
ALTER TABLE snapshots ADD COLUMN chain_length INTEGER NOT NULL DEFAULT 0;
ALTER TABLE snapshots ADD COLUMN full_id TEXT;
UPDATE snapshots SET full_id = id WHERE kind = 'full';
