#!/usr/bin/env node
// A writer that behaves like Signal Desktop's database writer, to run while
// a backup is taken.
//
//   node writer.mjs DB_PATH KEY_HEX OUT_FILE [options]
//
// Opens the database the way Signal does (see lib.mjs: raw key, WAL,
// synchronous FULL, no busy timeout), then loops: one message per small
// transaction (sometimes with an attachment whose file is written first,
// as Signal does), ~1 ms pause, and after each COMMIT appends the committed
// message id plus "\n" to OUT_FILE. Every SQLITE_BUSY is counted and the
// transaction retried after 1 ms.
//
// SIGTERM or SIGINT: finish the current transaction, close the database
// (PRAGMA optimize, then close, like Signal) and print one JSON line:
//   {"commits": N, "busy": B, "p50_ms": x, "p99_ms": y, ...}
// p50/p99 are per-message commit latencies, from the first attempt to the
// end of the COMMIT that succeeded (SQLITE_BUSY retries included). A second
// signal exits at once; SIGKILL works at any time (the ids in OUT_FILE
// stay a subset of the committed messages).
//
// Options:
//   --sleep-ms N          pause between transactions (default 1)
//   --attachment-every N  about 1 message in N gets an attachment (default 10; 0 = never)
//   --no-files            attachment rows without writing their files
//   --checkpoint-ms N     Signal's checkpoint policy: a WAL hook replaces
//                         SQLite's auto-checkpoint, and PRAGMA
//                         wal_checkpoint(TRUNCATE) runs after a commit once
//                         N ms have passed since the last one, or when the
//                         WAL reaches 1000 pages (default 30000, as Signal);
//                         0 = no hook, SQLite's default auto-checkpoint
//   --delete-every N      every N commits delete an older message written by
//                         this run that has an attachment: row first, file
//                         after (as Signal's disappearing messages do); its
//                         id is appended to OUT_FILE.deleted (default 0 = off)
//   --duration-s S        stop by itself after S seconds
//   --max-commits N       stop by itself after N commits

import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

import {
  INSERT_ATTACHMENT_SQL,
  INSERT_MESSAGE_SQL,
  isBusy,
  openSignalDb,
  percentile,
  relPathFor,
  round3,
  sleep,
} from './lib.mjs';

const USAGE = 'usage: writer.mjs DB_PATH KEY_HEX OUT_FILE [--sleep-ms N] [--attachment-every N] ' +
  '[--no-files] [--checkpoint-ms N] [--delete-every N] [--duration-s S] [--max-commits N]';

// Signal's WalCheckpoints: checkpoint when the WAL holds this many pages.
const CHECKPOINT_PAGES = 1000;

// --- Stop handling first, so a signal during start-up is not fatal. ------
let stopping = false;
function onSignal() {
  if (stopping) process.exit(130); // second signal: give up at once
  stopping = true;
}
process.on('SIGTERM', onSignal);
process.on('SIGINT', onSignal);

function fail(message, code = 1) {
  process.stderr.write(`writer: ${message}\n`);
  process.exit(code);
}

function parseArgs(argv) {
  const positional = [];
  const opts = {
    sleepMs: 1,
    attachmentEvery: 10,
    files: true,
    checkpointMs: 30_000,
    deleteEvery: 0,
    durationS: 0,
    maxCommits: 0,
  };
  const num = (name, v) => {
    if (v === undefined || !/^\d+(\.\d+)?$/.test(v)) fail(`${name} needs a non-negative number\n${USAGE}`);
    return Number(v);
  };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    switch (a) {
      case '--sleep-ms': opts.sleepMs = num(a, argv[++i]); break;
      case '--attachment-every': opts.attachmentEvery = num(a, argv[++i]); break;
      case '--no-files': opts.files = false; break;
      case '--checkpoint-ms': opts.checkpointMs = num(a, argv[++i]); break;
      case '--delete-every': opts.deleteEvery = num(a, argv[++i]); break;
      case '--duration-s': opts.durationS = num(a, argv[++i]); break;
      case '--max-commits': opts.maxCommits = num(a, argv[++i]); break;
      case '-h':
      case '--help':
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
        break;
      default:
        if (a.startsWith('--')) fail(`unknown option ${a}\n${USAGE}`);
        positional.push(a);
    }
  }
  if (positional.length !== 3) fail(USAGE);
  [opts.dbPath, opts.key, opts.outFile] = positional;
  return opts;
}

const WORDS = ['ok', 'on', 'my', 'way', 'see', 'you', 'soon', 'café', '日本語', '👍', 'thanks', 'later'];

function randomBody() {
  const n = 1 + (randomBytes(1)[0] % 12);
  const words = [];
  for (let i = 0; i < n; i += 1) words.push(WORDS[randomBytes(1)[0] % WORDS.length]);
  return words.join(' ');
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(opts.dbPath)) fail(`${opts.dbPath}: no such file`, 2);

  let db;
  try {
    db = openSignalDb(opts.dbPath, opts.key);
  } catch (error) {
    fail(`cannot open database: ${error.code ?? ''} ${error.message}`, 2);
  }

  const attachmentsDir = path.join(path.dirname(path.dirname(opts.dbPath)), 'attachments.noindex');
  const outFd = fs.openSync(opts.outFile, 'a');
  const deletedFd = opts.deleteEvery > 0 ? fs.openSync(`${opts.outFile}.deleted`, 'a') : null;

  // Checkpoints the way current Signal does them (WalCheckpoints.std.ts).
  let walPages = 0;
  let lastCheckpointAt = 0; // Signal starts from 0: the first commit checkpoints
  if (opts.checkpointMs > 0) {
    db.setWalHook((_dbName, pageCount) => {
      walPages = pageCount;
    });
  }

  let conversationIds = db.prepare('SELECT id FROM conversations', { pluck: true }).all();
  if (conversationIds.length === 0) {
    const id = randomUUID();
    db.prepare("INSERT INTO conversations (id, json, type) VALUES (?, ?, 'private')").run([
      id,
      JSON.stringify({ id, type: 'private' }),
    ]);
    conversationIds = [id];
  }

  const insertMessage = db.prepare(INSERT_MESSAGE_SQL);
  const insertAttachment = db.prepare(INSERT_ATTACHMENT_SQL);
  const deleteMessage = db.prepare('DELETE FROM messages WHERE id = ?');

  const stats = {
    commits: 0,
    busy: 0,
    attachments: 0,
    deleted: 0,
    checkpoints: 0,
    checkpointBusy: 0,
  };
  const latencies = [];
  const deletable = []; // { id, file } of our messages with attachments
  const startedAt = performance.now();

  const timeUp = () =>
    stopping ||
    (opts.durationS > 0 && performance.now() - startedAt >= opts.durationS * 1000) ||
    (opts.maxCommits > 0 && stats.commits >= opts.maxCommits);

  /**
   * Run `fn` in a transaction, retrying on SQLITE_BUSY. Returns false if a
   * stop was requested before it could commit.
   */
  async function commit(fn) {
    const tx = db.transaction(fn);
    for (;;) {
      try {
        tx();
        return true;
      } catch (error) {
        if (!isBusy(error)) throw error;
        stats.busy += 1;
        if (stopping) return false;
        await sleep(1);
      }
    }
  }

  function maybeCheckpoint() {
    if (opts.checkpointMs <= 0) return;
    const now = performance.now();
    if (walPages < CHECKPOINT_PAGES && now - lastCheckpointAt < opts.checkpointMs) return;
    try {
      const [row] = db.pragma('wal_checkpoint(TRUNCATE)');
      // busy = 1: a reader (e.g. a backup's read transaction) kept the
      // checkpoint from finishing. Not an error, as in Signal.
      if (row?.busy) stats.checkpointBusy += 1;
      stats.checkpoints += 1;
    } catch (error) {
      if (!isBusy(error) && error.code !== 'SQLITE_LOCKED') throw error;
      stats.checkpointBusy += 1;
    }
    lastCheckpointAt = now;
    walPages = 0;
  }

  while (!timeUp()) {
    const id = randomUUID();
    const conversationId = conversationIds[stats.commits % conversationIds.length];
    const now = Date.now();
    const withAttachment =
      opts.attachmentEvery > 0 && randomBytes(2).readUInt16BE(0) % opts.attachmentEvery === 0;

    let attachment = null;
    if (withAttachment) {
      const name = randomBytes(32).toString('hex');
      const size = 1024 + (randomBytes(2).readUInt16BE(0) % (63 * 1024));
      attachment = { rel: relPathFor(name), file: path.join(attachmentsDir, relPathFor(name)), size };
      if (opts.files) {
        // Signal writes the file before the row that references it.
        fs.mkdirSync(path.dirname(attachment.file), { recursive: true });
        fs.writeFileSync(attachment.file, randomBytes(size));
      }
    }

    const body = randomBody();
    const t0 = performance.now();
    const committed = await commit(() => {
      insertMessage.run({
        id,
        json: JSON.stringify({ id, conversationId, type: 'outgoing', body, sent_at: now, schemaVersion: 14 }),
        readStatus: 0,
        seenStatus: 2,
        sent_at: now,
        received_at: now,
        conversationId,
        source: null,
        sourceServiceId: null,
        sourceDevice: null,
        type: 'outgoing',
        body,
        hasAttachments: attachment ? 1 : 0,
        hasFileAttachments: 0,
        hasVisualMediaAttachments: attachment ? 1 : 0,
      });
      if (attachment) {
        insertAttachment.run({
          messageId: id,
          orderInMessage: 0,
          conversationId,
          sentAt: now,
          clientUuid: randomUUID(),
          size: attachment.size,
          contentType: 'image/jpeg',
          path: attachment.rel,
          plaintextHash: randomBytes(32).toString('hex'),
          localKey: randomBytes(64).toString('base64'),
          fileName: null,
          height: 480,
          width: 640,
          digest: randomBytes(32).toString('base64'),
          key: randomBytes(64).toString('base64'),
          iv: randomBytes(16).toString('base64'),
          thumbnailPath: null,
          thumbnailSize: null,
          thumbnailContentType: null,
          thumbnailLocalKey: null,
          thumbnailVersion: null,
        });
      }
    });
    if (!committed) {
      // Stopped while the database was busy: nothing references the file.
      if (attachment && opts.files) fs.rmSync(attachment.file, { force: true });
      break;
    }
    latencies.push(performance.now() - t0);
    fs.writeSync(outFd, `${id}\n`);
    stats.commits += 1;
    if (attachment) {
      stats.attachments += 1;
      deletable.push({ id, file: attachment.file });
    }

    if (opts.deleteEvery > 0 && stats.commits % opts.deleteEvery === 0 && deletable.length > 1) {
      const victim = deletable.shift();
      if (await commit(() => deleteMessage.run([victim.id]))) {
        // The file goes only after the row that referenced it is gone.
        if (opts.files) fs.rmSync(victim.file, { force: true });
        fs.writeSync(deletedFd, `${victim.id}\n`);
        stats.deleted += 1;
      }
    }

    maybeCheckpoint();
    await sleep(opts.sleepMs);
  }

  // Clean stop, like Signal's closeWritable(): optimize, then close (which
  // checkpoints the WAL if this is the last connection).
  db.pragma('optimize');
  db.close();
  fs.closeSync(outFd);
  if (deletedFd !== null) fs.closeSync(deletedFd);

  const result = {
    commits: stats.commits,
    busy: stats.busy,
    p50_ms: round3(percentile(latencies, 50)),
    p99_ms: round3(percentile(latencies, 99)),
    max_ms: round3(latencies.length ? latencies.reduce((a, b) => Math.max(a, b)) : null),
    attachments: stats.attachments,
    deleted: stats.deleted,
    checkpoints: stats.checkpoints,
    checkpointBusy: stats.checkpointBusy,
    elapsed_s: round3((performance.now() - startedAt) / 1000),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

main().catch((error) => {
  process.stderr.write(`writer: ${error.stack ?? error}\n`);
  process.exit(1);
});
