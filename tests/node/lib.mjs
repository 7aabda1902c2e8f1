// Shared helpers for the Node.js fixtures: opening a database the way Signal
// Desktop does, the Signal-like schema, a seeded random generator and small
// utilities. Only the scripts in this folder import it.

import Database from '@signalapp/sqlcipher';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleepMs } from 'node:timers/promises';

export { Database };

// Signal's schema version (PRAGMA user_version) that the fixture claims.
// 1360 is the migration that introduced `message_attachments`.
export const USER_VERSION = 1360;

export const KEY_RE = /^[0-9a-fA-F]{64}$/;

export const sleep = sleepMs;

/** True for SQLITE_BUSY and its extended codes (SQLITE_BUSY_SNAPSHOT, ...). */
export function isBusy(error) {
  return typeof error?.code === 'string' && error.code.startsWith('SQLITE_BUSY');
}

/**
 * Open an encrypted database with the exact sequence of Signal Desktop's
 * `openAndSetUpSQLCipher` (ts/sql/Server.node.ts): raw key, WAL, synchronous
 * FULL, foreign keys, fullfsync settings, Signal's FTS5 tokenizer.
 *
 * Signal sets no busy_timeout; the driver's default is 0, so a locked
 * database surfaces as SQLITE_BUSY immediately.
 *
 * `new Database(path)` creates a missing file: callers that must not create
 * one check for the file first. `inspect(db)`, if given, runs right after the
 * key is verified and before Signal's pragmas change anything.
 */
export function openSignalDb(path, keyHex, { inspect } = {}) {
  if (!KEY_RE.test(keyHex)) {
    throw new Error('key must be 64 hex characters');
  }
  const db = new Database(path, { cacheStatements: true });
  try {
    db.pragma(`key = "x'${keyHex}'"`);
    // The key pragma never fails; the first real read does (SQLITE_NOTADB on
    // a wrong key), so read the schema before anything else.
    db.prepare('SELECT count(*) FROM sqlite_master', { pluck: true }).get();
    inspect?.(db);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma('fullfsync = false');
    db.pragma('checkpoint_fullfsync = true');
    // Needed by messages_fts (tokenize = 'signal_tokenizer'): without it,
    // inserting a message and even PRAGMA integrity_check fail.
    db.initTokenizer();
  } catch (error) {
    // Deliberately NOT db.close(): closing the last connection to a WAL
    // database checkpoints it and deletes -wal, and SQLite does that even
    // after a wrong key (a checkpoint copies raw, still-encrypted frames).
    // A failed open must leave the files under test exactly as they were;
    // the connection goes away with the process.
    throw error;
  }
  return db;
}

/**
 * Schema modelled on Signal Desktop's (migrations up to 1360), reduced to the
 * tables and columns a backup test cares about. Names and layout follow
 * Signal: `messages` has an explicit `rowid INTEGER PRIMARY KEY` and a unique
 * text `id` (so VACUUM cannot renumber the rowids messages_fts refers to),
 * `messages_fts` uses Signal's tokenizer and is kept up to date by triggers,
 * `message_attachments` is a STRICT table whose `path` is `xx/<64 hex>`
 * relative to attachments.noindex.
 */
export const SCHEMA_SQL = `
CREATE TABLE conversations (
  id TEXT PRIMARY KEY ASC,
  json TEXT,
  active_at INTEGER,
  type TEXT,
  members TEXT,
  name TEXT,
  profileName TEXT,
  profileFamilyName TEXT,
  profileFullName TEXT,
  e164 TEXT,
  serviceId TEXT,
  groupId TEXT,
  profileLastFetchedAt INTEGER,
  expireTimerVersion INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX conversations_active ON conversations (active_at)
  WHERE active_at IS NOT NULL;

CREATE TABLE messages (
  rowid INTEGER PRIMARY KEY ASC,
  id TEXT NOT NULL UNIQUE,
  json TEXT,
  readStatus INTEGER,
  seenStatus INTEGER,
  expires_at INTEGER,
  expireTimer INTEGER,
  expirationStartTimestamp INTEGER,
  sent_at INTEGER,
  received_at INTEGER,
  schemaVersion INTEGER,
  conversationId TEXT,
  source TEXT,
  sourceServiceId TEXT,
  sourceDevice INTEGER,
  type TEXT,
  body TEXT,
  hasAttachments INTEGER,
  hasFileAttachments INTEGER,
  hasVisualMediaAttachments INTEGER,
  isViewOnce INTEGER,
  storyId TEXT,
  isStory INTEGER
);
CREATE INDEX messages_conversation ON messages
  (conversationId, isStory, storyId, received_at, sent_at);
CREATE INDEX messages_expires_at ON messages (expires_at);

CREATE VIRTUAL TABLE messages_fts USING fts5(
  body,
  tokenize = 'signal_tokenizer'
);
CREATE TRIGGER messages_on_insert AFTER INSERT ON messages
WHEN new.isViewOnce IS NOT 1 AND new.storyId IS NULL
BEGIN
  INSERT INTO messages_fts (rowid, body) VALUES (new.rowid, new.body);
END;
CREATE TRIGGER messages_on_delete AFTER DELETE ON messages BEGIN
  DELETE FROM messages_fts WHERE rowid = old.rowid;
END;
CREATE TRIGGER messages_on_update AFTER UPDATE ON messages
WHEN (new.body IS NULL OR old.body IS NOT new.body)
  AND new.isViewOnce IS NOT 1 AND new.storyId IS NULL
BEGIN
  DELETE FROM messages_fts WHERE rowid = old.rowid;
  INSERT INTO messages_fts (rowid, body) VALUES (new.rowid, new.body);
END;

CREATE TABLE message_attachments (
  messageId TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
  editHistoryIndex INTEGER NOT NULL,
  attachmentType TEXT NOT NULL,
  orderInMessage INTEGER NOT NULL,
  conversationId TEXT NOT NULL,
  sentAt INTEGER NOT NULL,
  clientUuid TEXT,
  size INTEGER NOT NULL,
  contentType TEXT NOT NULL,
  path TEXT,
  plaintextHash TEXT,
  localKey TEXT,
  caption TEXT,
  fileName TEXT,
  blurHash TEXT,
  height INTEGER,
  width INTEGER,
  digest TEXT,
  key TEXT,
  iv TEXT,
  version INTEGER,
  thumbnailPath TEXT,
  thumbnailSize INTEGER,
  thumbnailContentType TEXT,
  thumbnailLocalKey TEXT,
  thumbnailVersion INTEGER,
  pending INTEGER,
  PRIMARY KEY (messageId, editHistoryIndex, attachmentType, orderInMessage)
) STRICT;

CREATE TABLE items (
  id TEXT PRIMARY KEY ASC,
  json TEXT
);

CREATE TABLE sticker_packs (
  id TEXT PRIMARY KEY,
  key TEXT NOT NULL,
  author TEXT,
  coverStickerId INTEGER,
  createdAt INTEGER,
  downloadAttempts INTEGER,
  installedAt INTEGER,
  lastUsed INTEGER,
  status TEXT,
  stickerCount INTEGER,
  title TEXT
);

CREATE TABLE stickers (
  id INTEGER NOT NULL,
  packId TEXT NOT NULL,
  emoji TEXT,
  height INTEGER,
  isCoverOnly INTEGER,
  lastUsed INTEGER,
  path TEXT,
  width INTEGER,
  version INTEGER,
  localKey TEXT,
  size INTEGER,
  PRIMARY KEY (id, packId),
  CONSTRAINT stickers_fk FOREIGN KEY (packId)
    REFERENCES sticker_packs(id) ON DELETE CASCADE
);
`;

export const INSERT_MESSAGE_SQL = `
INSERT INTO messages (
  id, json, readStatus, seenStatus, expires_at, expireTimer,
  expirationStartTimestamp, sent_at, received_at, schemaVersion,
  conversationId, source, sourceServiceId, sourceDevice, type, body,
  hasAttachments, hasFileAttachments, hasVisualMediaAttachments,
  isViewOnce, storyId, isStory
) VALUES (
  $id, $json, $readStatus, $seenStatus, NULL, NULL,
  NULL, $sent_at, $received_at, 14,
  $conversationId, $source, $sourceServiceId, $sourceDevice, $type, $body,
  $hasAttachments, $hasFileAttachments, $hasVisualMediaAttachments,
  0, NULL, 0
)`;

export const INSERT_ATTACHMENT_SQL = `
INSERT INTO message_attachments (
  messageId, editHistoryIndex, attachmentType, orderInMessage,
  conversationId, sentAt, clientUuid, size, contentType, path,
  plaintextHash, localKey, fileName, height, width, digest, key, iv, version,
  thumbnailPath, thumbnailSize, thumbnailContentType, thumbnailLocalKey,
  thumbnailVersion, pending
) VALUES (
  $messageId, -1, 'attachment', $orderInMessage,
  $conversationId, $sentAt, $clientUuid, $size, $contentType, $path,
  $plaintextHash, $localKey, $fileName, $height, $width, $digest, $key, $iv, 2,
  $thumbnailPath, $thumbnailSize, $thumbnailContentType, $thumbnailLocalKey,
  $thumbnailVersion, 0
)`;

/** Signal's attachment layout: `<first 2 hex chars>/<64 hex chars>`. */
export function relPathFor(name64) {
  return `${name64.slice(0, 2)}/${name64}`;
}

/**
 * Deterministic random generator (AES-256-CTR keystream keyed by the seed).
 * Fast enough to produce megabytes of incompressible file content.
 */
export class Rng {
  #cipher;
  #buf = Buffer.alloc(0);
  #pos = 0;

  constructor(seed) {
    const key = createHash('sha256').update(`ghostwire-fixture\0${seed}`).digest();
    this.#cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  }

  /** A fresh, independent generator derived from this seed and a label. */
  static derive(seed, label) {
    return new Rng(`${seed}\0${label}`);
  }

  bytes(n) {
    if (n > 4096) {
      // Large requests (file content) go straight through the cipher.
      return this.#cipher.update(Buffer.alloc(n));
    }
    if (this.#pos + n > this.#buf.length) {
      this.#buf = this.#cipher.update(Buffer.alloc(65536));
      this.#pos = 0;
    }
    const out = this.#buf.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return Buffer.from(out);
  }

  /** Uniform float in [0, 1). */
  float() {
    return this.bytes(6).readUIntBE(0, 6) / 2 ** 48;
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo, hi) {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  chance(p) {
    return this.float() < p;
  }

  pick(array) {
    return array[this.int(0, array.length - 1)];
  }

  hex(nBytes) {
    return this.bytes(nBytes).toString('hex');
  }

  base64(nBytes) {
    return this.bytes(nBytes).toString('base64');
  }

  uuid() {
    const b = this.bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = b.toString('hex');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  /** Fisher–Yates shuffle, in place. */
  shuffle(array) {
    for (let i = array.length - 1; i > 0; i -= 1) {
      const j = this.int(0, i);
      [array[i], array[j]] = [array[j], array[i]];
    }
    return array;
  }
}

export function randomSeed() {
  return randomBytes(8).toString('hex');
}

/** Percentile (nearest-rank) of an unsorted array of numbers. */
export function percentile(values, p) {
  if (values.length === 0) {
    return null;
  }
  const sorted = Float64Array.from(values).sort();
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

export function round3(x) {
  return x === null ? null : Math.round(x * 1000) / 1000;
}
