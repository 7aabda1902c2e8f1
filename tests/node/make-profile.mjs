#!/usr/bin/env node
// Build a realistic Ghostwire home directory (HOME=/home/kasm-user) holding a
// Signal Desktop profile, for backup/restore tests.
//
//   node make-profile.mjs HOME_DIR [--messages N] [--attachments N]
//                                  [--attachment-bytes SIZE] [--compressible F]
//                                  [--wal-messages M] [--seed S]
//
// --attachment-bytes SIZE (e.g. 200M, 1.8G) replaces --attachments: files are
// added with a Signal-like size mix (mostly 1 KiB–300 KiB images, documents
// and voice notes; about 1 in 13 a 1–24 MiB video) until they hold SIZE
// bytes. --compressible F writes that share of the files as hex text
// (about 2:1 under zstd) instead of incompressible bytes (default 0).
//
// The database is made with Signal's own driver (@signalapp/sqlcipher) and
// is deliberately left with its most recent rows only in `db.sqlite-wal`:
// the process exits without closing the database, so a copy of `db.sqlite`
// alone misses them (checked before exiting). A JSON summary goes to stdout.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import {
  Database,
  INSERT_ATTACHMENT_SQL,
  INSERT_MESSAGE_SQL,
  Rng,
  SCHEMA_SQL,
  USER_VERSION,
  openSignalDb,
  randomSeed,
  relPathFor,
} from './lib.mjs';

const USAGE =
  'usage: make-profile.mjs HOME_DIR [--messages N] [--attachments N] ' +
  '[--attachment-bytes SIZE] [--compressible F] [--wal-messages M] [--seed S]';

const KiB = 1024;
const MiB = 1024 * KiB;

// Fixed epoch for message timestamps, so that a given --seed always yields
// the same database content (2025-01-01T00:00:00Z).
const BASE_TIME_MS = 1735689600000;

function fail(message) {
  process.stderr.write(`make-profile: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const opts = {
    home: undefined,
    messages: 3000,
    attachments: 40,
    attachmentBytes: undefined,
    compressible: 0,
    walMessages: undefined,
    seed: undefined,
  };
  const intOpt = (name, value) => {
    if (value === undefined || !/^\d+$/.test(value)) {
      fail(`${name} needs a non-negative integer\n${USAGE}`);
    }
    return Number(value);
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    switch (arg) {
      case '--messages':
        opts.messages = intOpt(arg, argv[++i]);
        break;
      case '--attachments':
        opts.attachments = intOpt(arg, argv[++i]);
        break;
      case '--attachment-bytes': {
        const m = /^(\d+(?:\.\d+)?)([KMG]?)i?B?$/i.exec(argv[++i] ?? '');
        if (!m) fail(`--attachment-bytes needs a size such as 200M or 1.5G\n${USAGE}`);
        const unit = { '': 1, K: KiB, M: MiB, G: 1024 * MiB }[m[2].toUpperCase()];
        opts.attachmentBytes = Math.round(Number(m[1]) * unit);
        break;
      }
      case '--compressible': {
        const v = argv[++i];
        if (v === undefined || !/^(0(\.\d+)?|1(\.0*)?)$/.test(v)) {
          fail(`--compressible needs a number between 0 and 1\n${USAGE}`);
        }
        opts.compressible = Number(v);
        break;
      }
      case '--wal-messages':
        opts.walMessages = intOpt(arg, argv[++i]);
        break;
      case '--seed':
        opts.seed = argv[++i];
        if (opts.seed === undefined) fail(`--seed needs a value\n${USAGE}`);
        break;
      case '-h':
      case '--help':
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
        break;
      default:
        if (arg.startsWith('-') || opts.home !== undefined) {
          fail(`unexpected argument ${JSON.stringify(arg)}\n${USAGE}`);
        }
        opts.home = arg;
    }
  }
  if (opts.home === undefined) fail(USAGE);
  if (opts.messages < 1) fail('--messages must be at least 1');
  opts.walMessages ??= Math.min(200, opts.messages);
  if (opts.walMessages < 1 || opts.walMessages > opts.messages) {
    fail('--wal-messages must be between 1 and --messages');
  }
  opts.seed ??= randomSeed();
  return opts;
}

// ---------------------------------------------------------------- files --

function mkdir(dir, mode = 0o755) {
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, mode);
}

function writeFile(file, data, mode = 0o644) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, data);
  fs.chmodSync(file, mode);
}

/**
 * Write `size` bytes of incompressible (seeded) content in 1 MiB chunks, or,
 * with `text`, hex text of such content (half the entropy: about 2:1 under zstd).
 */
function writeRandomFile(file, size, rng, mode = 0o644, text = false) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fd = fs.openSync(file, 'w', mode);
  try {
    for (let left = size; left > 0; left -= MiB) {
      const n = Math.min(MiB, left);
      fs.writeSync(fd, text ? Buffer.from(rng.bytes(Math.ceil(n / 2)).toString('hex').slice(0, n)) : rng.bytes(n));
    }
  } finally {
    fs.closeSync(fd);
  }
  fs.chmodSync(file, mode);
}

/** Caches, logs, locks and session files a backup must skip. */
function makeSkippedStuff(home, profile, rng) {
  const junk = (rel, min = 4 * KiB, max = 64 * KiB) =>
    writeRandomFile(path.join(profile, rel), rng.int(min, max), rng);

  for (const f of ['index', 'data_0', 'data_1', 'data_2', 'data_3', 'f_000001', 'f_000002']) {
    junk(`Cache/Cache_Data/${f}`);
  }
  junk('Code Cache/js/index');
  junk(`Code Cache/js/${rng.hex(8)}_0`);
  junk('Code Cache/wasm/index');
  for (const f of ['index', 'data_0', 'data_1']) junk(`GPUCache/${f}`);
  for (const f of ['index', 'data_0']) junk(`DawnGraphiteCache/${f}`);
  for (const f of ['index', 'data_0']) junk(`DawnWebGPUCache/${f}`);
  junk('Crashpad/settings.dat', 40, 40);
  junk(`Crashpad/pending/${rng.uuid()}.dmp`);
  mkdir(path.join(profile, 'Crashpad/completed'));
  mkdir(path.join(profile, 'Crashpad/attachments'));
  junk(`blob_storage/${rng.uuid()}/0`, 1 * KiB, 8 * KiB);
  writeFile(
    path.join(profile, 'logs/app.log'),
    '{"level":30,"time":"2025-01-01T00:00:00.000Z","msg":"app ready"}\n'.repeat(50),
  );
  writeFile(
    path.join(profile, 'logs/main.log'),
    '{"level":30,"time":"2025-01-01T00:00:00.000Z","msg":"sql: initialized"}\n'.repeat(50),
  );
  junk(`temp/${rng.hex(16)}`);
  writeFile(path.join(profile, 'update-cache/installer.yml'), 'version: 7.99.0\n');
  junk(`update-cache/pending/${rng.hex(8)}.deb`);
  junk(`downloads.noindex/${relPathFor(rng.hex(32))}`);

  // Electron's single-instance markers. SingletonLock names "<host>-<pid>";
  // SingletonSocket points into a /tmp/scoped_dir* that is gone after a
  // restart (left dangling here on purpose).
  fs.symlinkSync(`ghostwire-0-${rng.int(100, 4000)}`, path.join(profile, 'SingletonLock'));
  fs.symlinkSync(String(rng.int(1e9, 9e9)) + String(rng.int(1e9, 9e9)), path.join(profile, 'SingletonCookie'));
  fs.symlinkSync(
    `/tmp/scoped_dir${rng.hex(3)}/SingletonSocket`,
    path.join(profile, 'SingletonSocket'),
  );

  // Outside the profile: regenerated by Kasm at every start, or caches.
  writeRandomFile(path.join(home, '.cache/fontconfig', `${rng.hex(16)}-le64.cache-8`), 12 * KiB, rng);
  writeRandomFile(path.join(home, '.cache/mesa_shader_cache/index'), 8 * KiB, rng);
  mkdir(path.join(home, '.vnc'), 0o700);
  writeRandomFile(path.join(home, '.vnc/passwd'), 8, rng, 0o600);
  writeFile(path.join(home, '.kasmpasswd'), `kasm_user:${rng.hex(16)}:ow\n`, 0o600);
}

/** Settings and small stores a backup must keep. */
function makeKeptStuff(home, profile, rng) {
  writeFile(
    path.join(profile, 'ephemeral.json'),
    `${JSON.stringify(
      {
        'system-tray-setting': 'DoNotUseSystemTray',
        'theme-setting': 'system',
        'spell-check': true,
        'window': { maximized: false, width: 1280, height: 800 },
      },
      null,
      '  ',
    )}\n`,
  );
  // Kept as a symlink, not followed.
  fs.symlinkSync('ephemeral.json', path.join(profile, 'current-theme'));

  for (const store of ['Local Storage/leveldb', 'IndexedDB/file__0.indexeddb.leveldb', 'Session Storage']) {
    const dir = path.join(profile, store);
    writeRandomFile(path.join(dir, '000003.log'), rng.int(2 * KiB, 32 * KiB), rng);
    writeFile(path.join(dir, 'CURRENT'), 'MANIFEST-000001\n');
    writeFile(path.join(dir, 'LOCK'), '');
    writeFile(path.join(dir, 'LOG'), '2025/01/01-00:00:00.000 1 Recovering log #3\n');
    writeRandomFile(path.join(dir, 'MANIFEST-000001'), 41, rng);
  }
  writeFile(path.join(profile, 'Preferences'), '{"spellcheck":{"dictionaries":["en-US"]}}');
  writeFile(path.join(profile, 'Local State'), '{"os_crypt":{"portal":{"prev_init_success":false}}}');
  writeFile(path.join(profile, 'Network Persistent State'), '{"net":{"http_server_properties":{"version":5}}}');

  writeFile(
    path.join(home, '.bashrc'),
    '# ~/.bashrc\nexport PATH="$HOME/.local/bin:$PATH"\nalias ll="ls -la"\n',
  );
  writeFile(path.join(home, 'Desktop/notes.txt'), 'Remember: back up Signal before upgrading.\n');
  writeFile(path.join(home, 'Desktop/Café notes – 日本語 ✓.txt'), 'Grüße, naïve café, 日本語 ✓\n');
  writeFile(path.join(home, 'Desktop/empty.txt'), '');
  mkdir(path.join(home, 'Downloads'));
  mkdir(path.join(home, 'Documents/private'), 0o700);
  writeFile(path.join(home, 'Documents/private/secrets.txt'), 'top secret\n', 0o600);
}

/** Listen on a Unix socket and never close it, so the socket file stays. */
async function makeSocket(socketPath) {
  // sun_path is limited to 107 bytes: bind through a relative name.
  const cwd = process.cwd();
  process.chdir(path.dirname(socketPath));
  try {
    const server = net.createServer();
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(path.basename(socketPath), resolve);
    });
    server.unref();
  } finally {
    process.chdir(cwd);
  }
}

// ------------------------------------------------------------- database --

const WORDS = [
  'hello', 'see', 'you', 'tomorrow', 'at', 'the', 'station', 'lunch', 'today',
  'photos', 'from', 'trip', 'meeting', 'moved', 'to', 'three', 'thanks', 'ok',
  'call', 'me', 'later', 'café', 'naïve', 'Grüße', 'ñandú', '日本語', 'ありがとう',
  '😀', '👍', '🎉', 'backup', 'signal', 'kasm', 'weekend', 'plans', 'dinner',
];

function sentence(rng) {
  const n = rng.int(1, 24);
  const words = [];
  for (let i = 0; i < n; i += 1) words.push(rng.pick(WORDS));
  const text = words.join(' ');
  return text[0].toUpperCase() + text.slice(1) + rng.pick(['.', '!', '?', '', ' :)']);
}

function makeConversations(rng, avatarRelPaths) {
  const conversations = [];
  for (let i = 0; i < 12; i += 1) {
    const id = rng.uuid();
    const isGroup = i >= 9;
    const name = isGroup ? `Group ${i - 8} ${rng.pick(['🎉', 'Family', 'Work', 'Café'])}` : null;
    const profileName = isGroup ? null : rng.pick(['Alice', 'Bob', 'Chloé', 'Dmitri', 'Eve', 'Fatima', 'Günther', 'Hana', 'Ivan']);
    const serviceId = isGroup ? null : rng.uuid();
    const e164 = isGroup ? null : `+1555${String(rng.int(0, 9999999)).padStart(7, '0')}`;
    const groupId = isGroup ? rng.base64(32) : null;
    const json = {
      id,
      type: isGroup ? 'group' : 'private',
      name: name ?? undefined,
      profileName: profileName ?? undefined,
      serviceId: serviceId ?? undefined,
      e164: e164 ?? undefined,
      groupId: groupId ?? undefined,
      groupVersion: isGroup ? 2 : undefined,
      version: 2,
    };
    if (i < avatarRelPaths.length) {
      json.profileAvatar = { path: avatarRelPaths[i], hash: rng.base64(32) };
    }
    conversations.push({
      id,
      json,
      type: json.type,
      name,
      profileName,
      e164,
      serviceId,
      groupId,
    });
  }
  return conversations;
}

/**
 * Decide which files exist and which message each attachment row belongs to.
 * Every file under attachments.noindex is referenced by exactly one row,
 * either as `path` or as `thumbnailPath`. Messages in `excluded` (to be
 * deleted later) get none.
 */
function planAttachments(rng, count, bulkMessages, totalMessages, excluded, bytesTarget, compressible) {
  const bigCount = count >= 4 ? Math.max(1, Math.round(count * 0.075)) : 0;
  const rows = [];
  let files = 0;
  let bytes = 0;
  let bigLeft = bigCount;
  // Log-uniform between lo and hi: many small files, few near the top.
  const logUniform = (lo, hi) => Math.round(lo * (hi / lo) ** rng.float());
  const more = () => (bytesTarget === undefined ? files < count : bytes < bytesTarget);
  while (more()) {
    const big =
      bytesTarget === undefined ? bigLeft > 0 && rng.chance(bigLeft / (count - files)) : rng.chance(0.075);
    if (big) bigLeft -= 1;
    const contentType = big
      ? 'video/mp4'
      : rng.pick(['image/jpeg', 'image/jpeg', 'image/png', 'image/webp', 'application/pdf', 'audio/aac']);
    let size;
    if (bytesTarget === undefined) size = big ? rng.int(2 * MiB, 8 * MiB) : rng.int(1 * KiB, 200 * KiB);
    else size = Math.min(big ? logUniform(1 * MiB, 24 * MiB) : logUniform(1 * KiB, 300 * KiB), bytesTarget - bytes);
    const row = { name: rng.hex(32), size, contentType, thumbnail: null, text: compressible > 0 && rng.chance(compressible) };
    files += 1;
    bytes += size;
    // Some images and videos carry a thumbnail file of their own.
    if ((contentType.startsWith('image/') || big) && more() && rng.chance(0.2)) {
      row.thumbnail = { name: rng.hex(32), size: rng.int(2 * KiB, 24 * KiB), contentType: 'image/jpeg' };
      files += 1;
      bytes += row.thumbnail.size;
    }
    rows.push(row);
  }

  // A share of the rows goes to messages that will only live in the WAL.
  const walRows = rows.length >= 2 ? Math.max(1, Math.round(rows.length * 0.15)) : 0;
  rng.shuffle(rows);
  rows.forEach((row, i) => {
    if (i < walRows || bulkMessages === 0) {
      row.messageIndex = rng.int(bulkMessages, totalMessages - 1);
    } else {
      do {
        row.messageIndex = rng.int(0, bulkMessages - 1);
      } while (excluded.has(row.messageIndex));
    }
  });
  return rows;
}

function makeMessages(rng, total, conversations) {
  const messages = [];
  let t = BASE_TIME_MS;
  for (let i = 0; i < total; i += 1) {
    t += rng.int(5_000, 30 * 60_000);
    const conv = rng.pick(conversations);
    const incoming = rng.chance(0.6);
    const sender = conv.type === 'private' ? conv : rng.pick(conversations.slice(0, 9));
    const body = sentence(rng);
    const id = rng.uuid();
    const msg = {
      id,
      conversationId: conv.id,
      type: incoming ? 'incoming' : 'outgoing',
      body,
      sent_at: t,
      received_at: t + rng.int(50, 5000),
      source: incoming ? sender.e164 : null,
      sourceServiceId: incoming ? sender.serviceId : null,
      sourceDevice: incoming ? rng.int(1, 3) : null,
      readStatus: 0,
      seenStatus: 2,
      attachments: [],
    };
    messages.push(msg);
  }
  return messages;
}

function messageParams(msg) {
  const hasVisual = msg.attachments.some((a) => /^(image|video)\//.test(a.contentType));
  const hasFile = msg.attachments.some((a) => !/^(image|video)\//.test(a.contentType));
  const json = {
    id: msg.id,
    conversationId: msg.conversationId,
    type: msg.type,
    body: msg.body,
    sent_at: msg.sent_at,
    received_at: msg.received_at,
    timestamp: msg.sent_at,
    source: msg.source ?? undefined,
    sourceServiceId: msg.sourceServiceId ?? undefined,
    sourceDevice: msg.sourceDevice ?? undefined,
    readStatus: msg.readStatus,
    seenStatus: msg.seenStatus,
    schemaVersion: 14,
  };
  return {
    id: msg.id,
    json: JSON.stringify(json),
    readStatus: msg.readStatus,
    seenStatus: msg.seenStatus,
    sent_at: msg.sent_at,
    received_at: msg.received_at,
    conversationId: msg.conversationId,
    source: msg.source,
    sourceServiceId: msg.sourceServiceId,
    sourceDevice: msg.sourceDevice,
    type: msg.type,
    body: msg.body,
    hasAttachments: msg.attachments.length > 0 ? 1 : 0,
    hasFileAttachments: hasFile ? 1 : 0,
    hasVisualMediaAttachments: hasVisual ? 1 : 0,
  };
}

function attachmentParams(msg, row, order, rng) {
  const image = row.contentType.startsWith('image/');
  return {
    messageId: msg.id,
    orderInMessage: order,
    conversationId: msg.conversationId,
    sentAt: msg.sent_at,
    clientUuid: rng.uuid(),
    size: row.size,
    contentType: row.contentType,
    path: relPathFor(row.name),
    plaintextHash: rng.hex(32),
    localKey: rng.base64(64),
    fileName: image ? null : `file-${row.name.slice(0, 8)}.${row.contentType.split('/')[1]}`,
    height: image ? rng.int(200, 4000) : null,
    width: image ? rng.int(200, 4000) : null,
    digest: rng.base64(32),
    key: rng.base64(64),
    iv: rng.base64(16),
    thumbnailPath: row.thumbnail ? relPathFor(row.thumbnail.name) : null,
    thumbnailSize: row.thumbnail?.size ?? null,
    thumbnailContentType: row.thumbnail?.contentType ?? null,
    thumbnailLocalKey: row.thumbnail ? rng.base64(64) : null,
    thumbnailVersion: row.thumbnail ? 2 : null,
  };
}

function insertMessages(db, stmts, msgs, rng) {
  for (const msg of msgs) {
    stmts.message.run(messageParams(msg));
    msg.attachments.forEach((row, order) => {
      stmts.attachment.run(attachmentParams(msg, row, order, rng));
    });
  }
}

/** Count messages in a copy of the given database files, in a temp dir. */
function countInCopy(files, keyHex) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-profile-check-'));
  try {
    for (const [src, name] of files) fs.copyFileSync(src, path.join(dir, name));
    const db = openSignalDb(path.join(dir, 'db.sqlite'), keyHex);
    const n = db.prepare('SELECT count(*) FROM messages', { pluck: true }).get();
    db.close();
    return n;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A plain SQLite database (no key) in WAL mode with its last rows left in
 * the -wal file. The connection is returned open on purpose.
 */
function makePlainWalDb(file, rng) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.exec(`CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    started_at INTEGER NOT NULL,
    user TEXT NOT NULL,
    state TEXT
  )`);
  const insert = db.prepare('INSERT INTO sessions (started_at, user, state) VALUES (?, ?, ?)');
  const add = (n) =>
    db.transaction(() => {
      for (let i = 0; i < n; i += 1) {
        insert.run([BASE_TIME_MS + rng.int(0, 1e9), 'kasm-user', rng.pick(['running', 'stopped', 'paused'])]);
      }
    })();
  add(100);
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.pragma('wal_autocheckpoint = 0');
  add(20);
  return { db, rows: 120, walRows: 20 };
}

/** Chromium's Cookies database: plain SQLite, rollback journal, no suffix. */
function makeCookiesDb(file) {
  const db = new Database(file);
  db.exec(`
    CREATE TABLE meta (key LONGVARCHAR NOT NULL UNIQUE PRIMARY KEY, value LONGVARCHAR);
    INSERT INTO meta VALUES ('version', '24'), ('last_compatible_version', '24');
    CREATE TABLE cookies (host_key TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, expires_utc INTEGER NOT NULL);
    INSERT INTO cookies VALUES ('.signal.org', '__cf_bm', 'x', 0);
  `);
  db.close();
  // Chromium leaves an empty rollback journal next to it.
  fs.writeFileSync(`${file}-journal`, '');
}

// ----------------------------------------------------------------- main --

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const home = path.resolve(opts.home);
  const profile = path.join(home, '.config/Signal');
  if (fs.existsSync(profile)) {
    fail(`${profile} already exists; give an empty or new HOME_DIR`);
  }

  const rng = new Rng(opts.seed);
  const contentSeed = (label) => Rng.derive(opts.seed, label);

  mkdir(home);
  mkdir(path.join(home, '.config'), 0o700);
  mkdir(profile, 0o700);
  mkdir(path.join(profile, 'sql'), 0o700);

  // The database key, as Signal stores it with the basic_text backend.
  const key = rng.hex(32);
  writeFile(path.join(profile, 'config.json'), `${JSON.stringify({ key }, null, '  ')}\n`, 0o600);

  makeKeptStuff(home, profile, contentSeed('kept'));
  makeSkippedStuff(home, profile, contentSeed('skipped'));

  // Avatars and stickers use the same `xx/<64 hex>` scheme as attachments.
  const avatarDir = path.join(profile, 'avatars.noindex');
  const stickerDir = path.join(profile, 'stickers.noindex');
  const avatars = [rng.hex(32), rng.hex(32)].map(relPathFor);
  const stickers = [rng.hex(32), rng.hex(32), rng.hex(32)].map(relPathFor);
  for (const rel of avatars) writeRandomFile(path.join(avatarDir, rel), rng.int(8 * KiB, 60 * KiB), contentSeed(rel));
  for (const rel of stickers) writeRandomFile(path.join(stickerDir, rel), rng.int(10 * KiB, 90 * KiB), contentSeed(rel));

  // Messages: `deleted` extra ones are inserted in bulk and deleted again in
  // the WAL phase, so the final count is exactly --messages.
  const conversations = makeConversations(rng, avatars);
  const deletedCount = Math.min(5, opts.messages - opts.walMessages);
  const total = opts.messages + deletedCount;
  const bulkCount = total - opts.walMessages;
  const messages = makeMessages(rng, total, conversations);
  // bulkCount >= 2 * deletedCount, so bulk messages remain for attachments.
  const deletedIdx = new Set();
  while (deletedIdx.size < deletedCount) deletedIdx.add(rng.int(0, bulkCount - 1));
  const plan = planAttachments(
    rng,
    opts.attachments,
    bulkCount,
    total,
    deletedIdx,
    opts.attachmentBytes,
    opts.compressible,
  );
  for (const row of plan) messages[row.messageIndex].attachments.push(row);
  const bulk = messages.slice(0, bulkCount);
  const walPhase = messages.slice(bulkCount);
  const toDelete = [...deletedIdx].map((i) => messages[i]);

  const attachmentsDir = path.join(profile, 'attachments.noindex');
  // Signal writes an attachment's file before the row that references it.
  const writeAttachmentFiles = (msgs) => {
    for (const msg of msgs) {
      for (const row of msg.attachments) {
        for (const f of [row, row.thumbnail].filter(Boolean)) {
          writeRandomFile(
            path.join(attachmentsDir, relPathFor(f.name)),
            f.size,
            contentSeed(f.name),
            0o644,
            row.text === true,
          );
        }
      }
    }
  };
  mkdir(attachmentsDir, 0o700);
  writeAttachmentFiles(bulk);

  const dbPath = path.join(profile, 'sql/db.sqlite');
  const db = openSignalDb(dbPath, key);
  db.exec(SCHEMA_SQL);
  db.pragma(`user_version = ${USER_VERSION}`);
  const stmts = {
    message: db.prepare(INSERT_MESSAGE_SQL),
    attachment: db.prepare(INSERT_ATTACHMENT_SQL),
  };

  db.transaction(() => {
    const insertConv = db.prepare(`INSERT INTO conversations
      (id, json, active_at, type, members, name, profileName, e164, serviceId, groupId)
      VALUES ($id, $json, $active_at, $type, NULL, $name, $profileName, $e164, $serviceId, $groupId)`);
    for (const c of conversations) {
      insertConv.run({
        id: c.id,
        json: JSON.stringify(c.json),
        active_at: BASE_TIME_MS,
        type: c.type,
        name: c.name,
        profileName: c.profileName,
        e164: c.e164,
        serviceId: c.serviceId,
        groupId: c.groupId,
      });
    }
    const insertItem = db.prepare('INSERT INTO items (id, json) VALUES (?, ?)');
    for (const [id, value] of [
      ['uuid_id', `${rng.uuid()}.1`],
      ['number_id', `+1555${rng.int(1000000, 9999999)}.1`],
      ['device_name', 'Ghostwire'],
      ['version', '7.99.0'],
      ['blocked', []],
    ]) {
      insertItem.run([id, JSON.stringify({ id, value })]);
    }
    const packId = rng.hex(16);
    db.prepare(`INSERT INTO sticker_packs
      (id, key, author, coverStickerId, createdAt, status, stickerCount, title)
      VALUES (?, ?, 'Signal', 0, ?, 'installed', ?, 'Fixture pack')`).run([
      packId,
      rng.base64(32),
      BASE_TIME_MS,
      stickers.length,
    ]);
    const insertSticker = db.prepare(`INSERT INTO stickers
      (id, packId, emoji, height, isCoverOnly, path, width, version, localKey, size)
      VALUES (?, ?, ?, 512, 0, ?, 512, 2, ?, ?)`);
    stickers.forEach((rel, i) => {
      const size = fs.statSync(path.join(stickerDir, rel)).size;
      insertSticker.run([i, packId, rng.pick(['😀', '👍', '🎉']), rel, rng.base64(64), size]);
    });
    insertMessages(db, stmts, bulk, rng);
  })();

  // Move everything so far into db.sqlite, then stop automatic checkpoints:
  // from here on, rows only reach the -wal file.
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.pragma('wal_autocheckpoint = 0');

  for (let i = 0; i < walPhase.length; i += 10) {
    const chunk = walPhase.slice(i, i + 10);
    writeAttachmentFiles(chunk);
    db.transaction(() => insertMessages(db, stmts, chunk, rng))();
  }
  // Updates and deletes that also exist only in the WAL: older messages
  // marked read, conversations touched, a few messages deleted.
  db.transaction(() => {
    const markRead = db.prepare('UPDATE messages SET readStatus = 0, seenStatus = 2 WHERE id = ?');
    for (const msg of bulk.slice(-50)) markRead.run([msg.id]);
    const touch = db.prepare('UPDATE conversations SET active_at = ? WHERE id = ?');
    for (const c of conversations) touch.run([messages[messages.length - 1].received_at, c.id]);
    const del = db.prepare('DELETE FROM messages WHERE id = ?');
    for (const msg of toDelete) del.run([msg.id]);
  })();

  // Prove that db.sqlite alone misses the WAL rows, and that db.sqlite plus
  // db.sqlite-wal has them all.
  const walPath = `${dbPath}-wal`;
  const walBytes = fs.existsSync(walPath) ? fs.statSync(walPath).size : 0;
  if (walBytes === 0) fail('db.sqlite-wal is empty; the WAL rows were checkpointed');
  const mainFileMessages = countInCopy([[dbPath, 'db.sqlite']], key);
  const fullMessages = countInCopy(
    [
      [dbPath, 'db.sqlite'],
      [walPath, 'db.sqlite-wal'],
    ],
    key,
  );
  if (mainFileMessages !== bulkCount || fullMessages !== opts.messages) {
    fail(
      `unexpected counts: db.sqlite alone has ${mainFileMessages} (want ${bulkCount}), ` +
        `with WAL ${fullMessages} (want ${opts.messages})`,
    );
  }

  // Other SQLite files in the home: plain (no key), detected by their header.
  const kasmDbPath = path.join(home, '.local/share/kasm/state.sqlite');
  const kasm = makePlainWalDb(kasmDbPath, contentSeed('kasm'));
  if (fs.statSync(`${kasmDbPath}-wal`).size === 0) fail('state.sqlite-wal is empty');
  makeCookiesDb(path.join(profile, 'Cookies'));

  // A real socket file inside the profile, so a walker meets one.
  await makeSocket(path.join(profile, 'real.sock'));

  const attachmentFiles = [];
  for (const row of plan) {
    attachmentFiles.push(relPathFor(row.name));
    if (row.thumbnail) attachmentFiles.push(relPathFor(row.thumbnail.name));
  }
  attachmentFiles.sort();
  const attachmentBytes = plan.reduce((sum, r) => sum + r.size + (r.thumbnail?.size ?? 0), 0);

  const summary = {
    key,
    messages: opts.messages,
    walMessages: opts.walMessages,
    attachments: attachmentFiles,
    dbPath,
    seed: opts.seed,
    home,
    profileDir: profile,
    userVersion: USER_VERSION,
    mainFileMessages,
    walDeletedMessages: toDelete.length,
    walBytes,
    attachmentBytes,
    avatars,
    stickers,
    walMessageIds: walPhase.map((m) => m.id),
    walDeletedMessageIds: toDelete.map((m) => m.id),
    plainDbs: [
      { path: kasmDbPath, rows: kasm.rows, walRows: kasm.walRows },
      { path: path.join(profile, 'Cookies'), rows: 1, walRows: 0 },
    ],
  };

  // Exit WITHOUT db.close(): closing the last connection would checkpoint
  // the WAL into db.sqlite and delete db.sqlite-wal. process.exit() skips
  // that (the driver does not close databases at exit), leaving -wal and
  // -shm on disk as after a crash or while Signal is running.
  process.stdout.write(`${JSON.stringify(summary)}\n`, () => process.exit(0));
}

main().catch((error) => {
  process.stderr.write(`make-profile: ${error.stack ?? error}\n`);
  process.exit(1);
});
