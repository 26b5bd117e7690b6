// The nats.js side of test_nats_interop: a third-party client that speaks our wire format
// (docs/envelope.md) against a real nats-server.
//
//   node peer.mjs <server url> <subject prefix> receive
//     Subscribes to "<prefix>.>", prints "ready" once the server has the subscription, waits at
//     most 10 s for one message, checks it (body valid against docs/envelope.schema.json,
//     subject == <prefix>.<name>, and when the message has headers: Nats-Msg-Id == the body's
//     id and the Content-Type of docs/envelope.md) and prints one line:
//     {"ok":true,"subject":...,"name":...,"payload":...,"id":...,"producer":...,"context":...,
//     "tags":...,"headers":...} (context and tags as the body had them, or null; headers an
//     object of the two header values, or null when the message had none) or
//     {"ok":false,"error":...}.
//   node peer.mjs <server url> <subject prefix> send
//     Publishes one envelope it builds itself (name "interop.from_js", payload
//     {"hello":"from nats.js","n":42}, context {"request_id":"js-1"}, tags {"from_js":true}) to
//     "<prefix>.interop.from_js" with the same headers,
//     flushes and prints {"ok":true,"id":...,"subject":...}, or {"ok":false,"error":...}.
//
//   node peer.mjs <server url> <subject prefix> js-read <stream>
//     Reads the first message of JetStream stream <stream> through an ordered consumer (waiting at
//     most 10 s) and checks and prints it as "receive" does.
//   node peer.mjs <server url> <subject prefix> js-send
//     Publishes the envelope of "send" with JetStream (its id as the message id) and waits for the
//     server's acknowledgement; prints {"ok":true,"id":...,"subject":...,"seq":...}.
//
// Exit status 0 when ok, 1 otherwise. Every wait is bounded, and a watchdog ends the process
// after 20 s whatever happens, so a parent that died never leaves this peer behind for long.
import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";

import Ajv2020 from "ajv/dist/2020.js";
import { connect, headers } from "nats";

const CONTENT_TYPE = "application/vnd.notifications.envelope.v1+json";
const RECEIVE_TIMEOUT_MS = 10_000;
const CONNECT_TIMEOUT_MS = 5_000;
const CLOSE_TIMEOUT_MS = 2_000;
const WATCHDOG_MS = 20_000;

let finished = false;

// Prints the one result line and exits; later calls are ignored.
function finish(result) {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(result.ok ? 0 : 1));
}

function fail(error) {
  const text = error instanceof Error ? error.message || String(error) : String(error);
  finish({ ok: false, error: text });
}

setTimeout(() => fail(`watchdog: the peer did not finish within ${WATCHDOG_MS} ms`), WATCHDOG_MS).unref();
process.on("unhandledRejection", (reason) => fail(reason));
process.on("uncaughtException", (error) => fail(error));

// A promise that rejects after `ms` with `what` in its message; the timer does not keep the
// process alive.
function timeout(ms, what) {
  return new Promise((_, reject) => {
    setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms).unref();
  });
}

function bounded(promise, ms, what) {
  return Promise.race([promise, timeout(ms, what)]);
}

function loadValidator() {
  const schemaUrl = new URL("../../../../docs/envelope.schema.json", import.meta.url);
  let schema;
  try {
    schema = JSON.parse(readFileSync(schemaUrl, "utf8"));
  } catch (error) {
    throw new Error(`cannot read the schema ${schemaUrl.pathname}: ${error.message}`);
  }
  const ajv = new Ajv2020({ allErrors: true, strict: true });
  const validate = ajv.compile(schema);
  return (body, what) => {
    if (!validate(body)) {
      throw new Error(`${what} is not valid per envelope.schema.json: ` +
                      ajv.errorsText(validate.errors, { dataVar: "body" }));
    }
  };
}

// RFC 3339 UTC with exactly six fraction digits (truncated to the microsecond), as our writers do.
function rfc3339Micros() {
  const micros = BigInt(Math.floor((performance.timeOrigin + performance.now()) * 1000));
  const millis = Number(micros / 1000n);
  const fraction = String(micros % 1_000_000n).padStart(6, "0");
  return new Date(millis).toISOString().replace(/\.\d{3}Z$/, `.${fraction}Z`);
}

async function openConnection(url) {
  return bounded(connect({
    servers: url,
    name: "notifications-interop-peer",
    timeout: CONNECT_TIMEOUT_MS,
    reconnect: false,
  }), CONNECT_TIMEOUT_MS + 1_000, `connect to ${url}`);
}

async function closeConnection(nc) {
  try {
    await bounded(nc.close(), CLOSE_TIMEOUT_MS, "close");
  } catch {
    // The result line matters, not a slow close.
  }
}

function header(msg, name) {
  if (!msg.headers) throw new Error("the message has no headers");
  const values = msg.headers.values(name);
  if (values.length !== 1) {
    throw new Error(`header ${name}: expected exactly one value, got ${JSON.stringify(values)}`);
  }
  return values[0];
}

async function receive(url, prefix) {
  const check = loadValidator();
  const nc = await openConnection(url);
  let resolveMessage;
  const arrived = new Promise((resolve) => { resolveMessage = resolve; });
  nc.subscribe(`${prefix}.>`, {
    max: 1,
    callback: (error, msg) => resolveMessage({ error, msg }),
  });
  await bounded(nc.flush(), CONNECT_TIMEOUT_MS, "flush the subscription");
  process.stdout.write("ready\n");

  const { error, msg } = await bounded(arrived, RECEIVE_TIMEOUT_MS, `wait for a message on ${prefix}.>`);
  if (error) throw error;

  const result = checked(msg, prefix, check);
  await closeConnection(nc);
  return result;
}

// The result line for a received envelope, after checking it (see "receive" above).
function checked(msg, prefix, check) {
  let body;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(msg.data));
  } catch (parseError) {
    throw new Error(`body is not UTF-8 JSON (${parseError.message}): ${msg.string().slice(0, 200)}`);
  }
  check(body, "body");
  // The body is everything a reader needs; headers are copies, sent only when enabled.
  let sentHeaders = null;
  if (msg.headers) {
    const msgId = header(msg, "Nats-Msg-Id");
    if (msgId !== body.id) {
      throw new Error(`header Nats-Msg-Id ${JSON.stringify(msgId)} != body id ${JSON.stringify(body.id)}`);
    }
    const contentType = header(msg, "Content-Type");
    if (contentType !== CONTENT_TYPE) {
      throw new Error(`header Content-Type ${JSON.stringify(contentType)} != ${JSON.stringify(CONTENT_TYPE)}`);
    }
    sentHeaders = { "Nats-Msg-Id": msgId, "Content-Type": contentType };
  }
  if (msg.subject !== `${prefix}.${body.name}`) {
    throw new Error(`subject ${JSON.stringify(msg.subject)} is not <prefix>.<name> for name ${JSON.stringify(body.name)}`);
  }
  return {
    ok: true,
    subject: msg.subject,
    name: body.name,
    payload: body.payload,
    id: body.id,
    producer: body.producer,
    context: body.context ?? null,
    tags: body.tags ?? null,
    headers: sentHeaders,
  };
}

async function jsRead(url, prefix, stream) {
  const check = loadValidator();
  const nc = await openConnection(url);
  const consumer = await bounded(nc.jetstream().consumers.get(stream), CONNECT_TIMEOUT_MS, `an ordered consumer of ${stream}`);
  const msg = await bounded(consumer.next({ expires: RECEIVE_TIMEOUT_MS }), RECEIVE_TIMEOUT_MS + 1_000,
                            `read the first message of stream ${stream}`);
  if (!msg) throw new Error(`stream ${stream} had no message within ${RECEIVE_TIMEOUT_MS} ms`);
  const result = checked(msg, prefix, check);
  await closeConnection(nc);
  return result;
}

// The envelope "send" and "js-send" publish, checked against the schema, with its headers.
function outgoing(prefix) {
  const check = loadValidator();
  const envelope = {
    id: randomUUID(),
    name: "interop.from_js",
    time: rfc3339Micros(),
    duration_us: 0,
    producer: "nodejs",
    producer_instance: randomUUID(),
    schema_version: 1,
    context: { request_id: "js-1" },
    tags: { from_js: true },
    payload: { hello: "from nats.js", n: 42 },
  };
  check(envelope, "the envelope this peer built");
  const h = headers();
  h.set("Nats-Msg-Id", envelope.id);
  h.set("Content-Type", CONTENT_TYPE);
  return { envelope, subject: `${prefix}.${envelope.name}`, headers: h };
}

async function send(url, prefix) {
  const { envelope, subject, headers: h } = outgoing(prefix);
  const nc = await openConnection(url);
  nc.publish(subject, new TextEncoder().encode(JSON.stringify(envelope)), { headers: h });
  await bounded(nc.flush(), CONNECT_TIMEOUT_MS, "flush the publish");
  await closeConnection(nc);
  return { ok: true, id: envelope.id, subject };
}

async function jsSend(url, prefix) {
  const { envelope, subject } = outgoing(prefix);
  const h = headers();
  h.set("Content-Type", CONTENT_TYPE);
  const nc = await openConnection(url);
  const ack = await bounded(nc.jetstream().publish(subject, new TextEncoder().encode(JSON.stringify(envelope)),
                                                   { msgID: envelope.id, headers: h }),
                            CONNECT_TIMEOUT_MS, "the server's acknowledgement");
  await closeConnection(nc);
  return { ok: true, id: envelope.id, subject, seq: ack.seq };
}

async function main() {
  const [url, prefix, mode, stream] = process.argv.slice(2);
  const modes = { receive: 5, send: 5, "js-read": 6, "js-send": 5 };
  if (!url || !prefix || !(mode in modes) || process.argv.length !== modes[mode]) {
    throw new Error("usage: node peer.mjs <server url> <subject prefix> receive|send|js-read <stream>|js-send");
  }
  if (mode === "receive") return receive(url, prefix);
  if (mode === "send") return send(url, prefix);
  if (mode === "js-read") return jsRead(url, prefix, stream);
  return jsSend(url, prefix);
}

main().then(finish, fail);
