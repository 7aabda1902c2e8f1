#!/usr/bin/env node
// Changes a Signal profile made by tests/node/make-profile.mjs the way a day of use would,
// for the benchmark's incremental step, through Signal's own driver:
//
//   node bench/change-profile.mjs HOME_DIR KEY_HEX [--share F]
//
// Deletes a share F (default 0.01) of the messages that have attachment files — row first,
// then its files, as Signal does — and adds as many new messages with new files of the same
// sizes (file first, then the row), plus F × messages new text messages. Everything goes
// through the WAL, as when Signal runs. Prints {"deleted", "added", "addedBytes", "messages"}.

import fs from 'node:fs';
import path from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';

import { INSERT_ATTACHMENT_SQL, INSERT_MESSAGE_SQL, openSignalDb, relPathFor } from '../tests/node/lib.mjs';

const USAGE = 'usage: change-profile.mjs HOME_DIR KEY_HEX [--share F]';

function fail(message) {
  process.stderr.write(`change-profile: ${message}\n`);
  process.exit(1);
}

const args = process.argv.slice(2);
let share = 0.01;
const i = args.indexOf('--share');
if (i >= 0) {
  share = Number(args[i + 1]);
  if (!(share > 0 && share <= 1)) fail(`--share needs a number in (0, 1]\n${USAGE}`);
  args.splice(i, 2);
}
if (args.length !== 2) fail(USAGE);
const [home, key] = args;
const profile = path.join(home, '.config/Signal');
const attachments = path.join(profile, 'attachments.noindex');
const db = openSignalDb(path.join(profile, 'sql/db.sqlite'), key);

const rows = db
  .prepare(
    `SELECT messageId, conversationId, size, contentType, path, thumbnailPath, thumbnailSize
     FROM message_attachments WHERE path IS NOT NULL ORDER BY random()`,
  )
  .all();
const victims = rows.slice(0, Math.max(1, Math.round(rows.length * share)));

// Deleting a message removes its attachment rows (ON DELETE CASCADE); files go after.
const deleteMessage = db.prepare('DELETE FROM messages WHERE id = ?');
db.transaction(() => {
  for (const v of victims) deleteMessage.run([v.messageId]);
})();
for (const v of victims) {
  for (const rel of [v.path, v.thumbnailPath].filter(Boolean)) {
    fs.rmSync(path.join(attachments, rel), { force: true });
  }
}

const insertMessage = db.prepare(INSERT_MESSAGE_SQL);
const insertAttachment = db.prepare(INSERT_ATTACHMENT_SQL);
function addMessage(conversationId, body, attachment) {
  const id = randomUUID();
  const now = Date.now();
  insertMessage.run({
    id,
    json: JSON.stringify({ id, conversationId, type: 'incoming', body, sent_at: now, schemaVersion: 14 }),
    readStatus: 0,
    seenStatus: 2,
    sent_at: now,
    received_at: now,
    conversationId,
    source: null,
    sourceServiceId: null,
    sourceDevice: null,
    type: 'incoming',
    body,
    hasAttachments: attachment ? 1 : 0,
    hasFileAttachments: 0,
    hasVisualMediaAttachments: attachment ? 1 : 0,
  });
  if (!attachment) return;
  insertAttachment.run({
    messageId: id,
    orderInMessage: 0,
    conversationId,
    sentAt: now,
    clientUuid: randomUUID(),
    size: attachment.size,
    contentType: attachment.contentType,
    path: attachment.rel,
    plaintextHash: randomBytes(32).toString('hex'),
    localKey: randomBytes(64).toString('base64'),
    fileName: null,
    height: null,
    width: null,
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

let addedBytes = 0;
for (const v of victims) {
  // Signal writes the file before the row that references it.
  const rel = relPathFor(randomBytes(32).toString('hex'));
  const file = path.join(attachments, rel);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fd = fs.openSync(file, 'w', 0o644);
  for (let left = v.size; left > 0; left -= 1 << 20) fs.writeSync(fd, randomBytes(Math.min(1 << 20, left)));
  fs.closeSync(fd);
  addedBytes += v.size;
  db.transaction(() => addMessage(v.conversationId, 'new photo', { rel, size: v.size, contentType: v.contentType }))();
}

const messages = db.prepare('SELECT count(*) FROM messages', { pluck: true }).get();
const conversations = db.prepare('SELECT id FROM conversations', { pluck: true }).all();
const textMessages = Math.max(1, Math.round(messages * share));
for (let n = 0; n < textMessages; n += 10) {
  db.transaction(() => {
    for (let k = n; k < Math.min(n + 10, textMessages); k += 1) {
      addMessage(conversations[k % conversations.length], `see you at ${k}`, null);
    }
  })();
}

const result = { deleted: victims.length, added: victims.length, addedBytes, textMessages, messages: messages + textMessages };
// Exit without closing, like make-profile: the new rows stay in the WAL as while Signal runs.
process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
