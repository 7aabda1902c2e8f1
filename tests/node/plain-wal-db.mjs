#!/usr/bin/env node
// A plain SQLite database in WAL mode that an application is writing, as Chromium's
// `History` or the `DIPS`, `Trust Tokens` and `Cookies` databases of Signal's Electron
// profile: each run adds ROWS rows of about 1 KiB (creating the database if needed)
// with automatic checkpoints off, and exits without closing it, so those rows, and the
// pages they grow the database by, are only in FILE-wal.
//
//   node plain-wal-db.mjs FILE ROWS
//
// Prints {"rows": total rows, "walBytes": size of FILE-wal}.

import fs from 'node:fs';
import path from 'node:path';

import { Database } from './lib.mjs';

const [file, rowsArg] = process.argv.slice(2);
if (file === undefined || !/^\d+$/.test(rowsArg ?? '')) {
  process.stderr.write('usage: plain-wal-db.mjs FILE ROWS\n');
  process.exit(1);
}
fs.mkdirSync(path.dirname(file), { recursive: true });
const db = new Database(file);
db.pragma('journal_mode = WAL');
db.pragma('wal_autocheckpoint = 0');
db.exec('CREATE TABLE IF NOT EXISTS visits (id INTEGER PRIMARY KEY, url TEXT NOT NULL)');
const insert = db.prepare('INSERT INTO visits (url) VALUES (?)');
db.transaction(() => {
  for (let i = 0; i < Number(rowsArg); i += 1) {
    insert.run([`https://example.org/${i}/${'x'.repeat(1000)}`]);
  }
})();
const rows = db.prepare('SELECT count(*) FROM visits', { pluck: true }).get();
process.stdout.write(`${JSON.stringify({ rows, walBytes: fs.statSync(`${file}-wal`).size })}\n`);
// Not closed: closing would checkpoint the WAL into FILE and delete it.
process.exit(0);
