#!/usr/bin/env node
// Check a Signal database with Signal's own driver, as Signal would open it.
//
//   node check-db.mjs DB_PATH KEY_HEX [IDS_FILE] [--close]
//
// Prints one JSON object on stdout:
//   {"integrity": "ok", "userVersion": N, "messages": N,
//    "missingIds": [...first 20...], "missingCount": N,
//    "attachmentPaths": [...distinct non-null message_attachments.path...],
//    ...more fields, see below}
//
// Exit status: 0 when the database could be opened (whatever the checks
// found: the caller asserts), 2 when it cannot be opened (missing file,
// wrong key, not a Signal database), 1 on usage errors.
//
// By default the database is NOT closed before exiting: closing the last
// connection would checkpoint the WAL into the main file and delete -wal,
// changing the files under test. Pass --close to close it as Signal does
// (PRAGMA optimize, then close).

import fs from 'node:fs';

import { KEY_RE, openSignalDb } from './lib.mjs';

const USAGE = 'usage: check-db.mjs DB_PATH KEY_HEX [IDS_FILE] [--close]';
const MAX_LISTED_MISSING = 20;

function usage(message) {
  process.stderr.write(`check-db: ${message}\n${USAGE}\n`);
  process.exit(1);
}

function cannotOpen(message) {
  process.stderr.write(`check-db: cannot open database: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const positional = [];
  let close = false;
  for (const arg of argv) {
    if (arg === '--close') close = true;
    else if (arg === '-h' || arg === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (arg.startsWith('--')) usage(`unknown option ${arg}`);
    else positional.push(arg);
  }
  if (positional.length < 2 || positional.length > 3) usage('wrong number of arguments');
  const [dbPath, key, idsFile] = positional;
  if (!KEY_RE.test(key)) usage('KEY_HEX must be 64 hex characters');
  return { dbPath, key, idsFile, close };
}

/**
 * Ids listed in the file, one per line. A last line without its newline is
 * not counted as listed (a writer killed mid-append, or a copy taken while
 * it was appending); it is reported as `partialLastLine`.
 */
function readIds(file) {
  const text = fs.readFileSync(file, 'utf8');
  const lines = text.split('\n');
  const partial = lines.pop(); // '' when the file ends with a newline
  const ids = lines.map((l) => l.trim()).filter((l) => l.length > 0);
  return { ids, partialLastLine: partial.trim() === '' ? null : partial };
}

function tableExists(db, name) {
  return (
    db
      .prepare("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", { pluck: true })
      .get([name]) > 0
  );
}

function distinct(db, sql) {
  return db.prepare(sql, { pluck: true }).all();
}

function main() {
  const { dbPath, key, idsFile, close } = parseArgs(process.argv.slice(2));

  // Read the ids first: a bad IDS_FILE is a usage error, not a db problem.
  const listed = idsFile === undefined ? null : readIds(idsFile);

  // The driver would silently create a missing database file.
  let stat;
  try {
    stat = fs.statSync(dbPath);
  } catch (error) {
    cannotOpen(`${dbPath}: ${error.code ?? error.message}`);
  }
  if (!stat.isFile()) cannotOpen(`${dbPath}: not a regular file`);

  let db;
  let journalMode;
  try {
    db = openSignalDb(dbPath, key, {
      inspect: (d) => {
        journalMode = d.pragma('journal_mode', { simple: true });
      },
    });
  } catch (error) {
    // A wrong key gives SQLITE_NOTADB ("file is not a database").
    cannotOpen(`${error.code ?? 'error'}: ${error.message}`);
  }
  if (!tableExists(db, 'messages')) cannotOpen('not a Signal database (no messages table)');

  const result = {};

  // Needs Signal's tokenizer (loaded by openSignalDb) because of messages_fts.
  try {
    const rows = db.pragma('integrity_check').map((r) => r.integrity_check);
    result.integrity = rows.join('; ');
  } catch (error) {
    result.integrity = `error: ${error.code ?? ''} ${error.message}`;
  }
  result.userVersion = db.pragma('user_version', { simple: true });
  result.messages = db.prepare('SELECT count(*) FROM messages', { pluck: true }).get();

  let missing = [];
  if (listed !== null) {
    const present = new Set(distinct(db, 'SELECT id FROM messages'));
    missing = listed.ids.filter((id) => !present.has(id));
  }
  result.missingIds = missing.slice(0, MAX_LISTED_MISSING);
  result.missingCount = missing.length;

  const hasAttachments = tableExists(db, 'message_attachments');
  result.attachmentPaths = hasAttachments
    ? distinct(db, 'SELECT DISTINCT path FROM message_attachments WHERE path IS NOT NULL ORDER BY path')
    : [];

  // Extra information, beyond the fields the tests are built on.
  result.idsChecked = listed === null ? 0 : listed.ids.length;
  if (listed?.partialLastLine) result.partialLastLine = listed.partialLastLine;
  result.journalMode = journalMode;
  // SQLCipher's page HMAC check: an empty result means every page is valid.
  const cipherRows = db.pragma('cipher_integrity_check').map((r) => Object.values(r)[0]);
  result.cipherIntegrity = cipherRows.length === 0 ? 'ok' : cipherRows.join('; ');
  result.thumbnailPaths = hasAttachments
    ? distinct(
        db,
        'SELECT DISTINCT thumbnailPath FROM message_attachments WHERE thumbnailPath IS NOT NULL ORDER BY 1',
      )
    : [];
  result.stickerPaths = tableExists(db, 'stickers')
    ? distinct(db, 'SELECT DISTINCT path FROM stickers WHERE path IS NOT NULL ORDER BY 1')
    : [];
  result.avatarPaths = tableExists(db, 'conversations')
    ? distinct(
        db,
        `SELECT DISTINCT json_extract(json, '$.profileAvatar.path') AS p FROM conversations
         WHERE p IS NOT NULL ORDER BY 1`,
      )
    : [];

  if (close) {
    db.pragma('optimize');
    db.close();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

try {
  main();
} catch (error) {
  process.stderr.write(`check-db: ${error.stack ?? error}\n`);
  process.exit(1);
}
