// A client in another language: publishes job messages (docs/protocol.md) to a RabbitMQ queue in
// plain AMQP 0-9-1 frames over node's net module (no library), each persistent and confirmed.
//   node publish.js amqp://guest:guest@127.0.0.1:5672/ QUEUE BODY_FILE...
// Prints "confirmed N" once RabbitMQ has confirmed every message; exits 1 on any error.
"use strict";
const net = require("net");
const fs = require("fs");

const [url, queue, ...files] = process.argv.slice(2);
const target = new URL(url);
const vhost = decodeURIComponent(target.pathname.slice(1)) || "/";
const bodies = files.map((f) => fs.readFileSync(f));

const shortstr = (s) => { const b = Buffer.from(s); return Buffer.concat([Buffer.from([b.length]), b]); };
const longstr = (b) => { const n = Buffer.alloc(4); n.writeUInt32BE(b.length); return Buffer.concat([n, b]); };
const u16 = (v) => { const b = Buffer.alloc(2); b.writeUInt16BE(v); return b; };
const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32BE(v); return b; };
const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(v)); return b; };

function frame(type, channel, payload) {
  return Buffer.concat([Buffer.from([type]), u16(channel), u32(payload.length), payload, Buffer.from([0xce])]);
}
const method = (channel, cls, id, ...args) => frame(1, channel, Buffer.concat([u16(cls), u16(id), ...args]));

const socket = net.connect(Number(target.port) || 5672, target.hostname);
let inbox = Buffer.alloc(0);
let frameMax = 131072;
let confirmed = 0;
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail("timed out"), 20000).unref();

socket.on("connect", () => socket.write(Buffer.from("AMQP\x00\x00\x09\x01", "binary")));
socket.on("error", (e) => fail(String(e)));
socket.on("data", (data) => {
  inbox = Buffer.concat([inbox, data]);
  while (inbox.length >= 7) {
    const size = inbox.readUInt32BE(3);
    if (inbox.length < size + 8) return;
    const [type, channel, payload] = [inbox[0], inbox.readUInt16BE(1), inbox.subarray(7, 7 + size)];
    inbox = inbox.subarray(size + 8);
    if (type === 1) onMethod(channel, payload.readUInt16BE(0), payload.readUInt16BE(2), payload.subarray(4));
  }
});

function onMethod(channel, cls, id, args) {
  const key = `${cls}.${id}`;
  if (key === "10.10") {  // connection.start -> start-ok (PLAIN)
    const login = `\0${decodeURIComponent(target.username)}\0${decodeURIComponent(target.password)}`;
    socket.write(method(0, 10, 11, u32(0), shortstr("PLAIN"), longstr(Buffer.from(login)), shortstr("en_US")));
  } else if (key === "10.30") {  // tune -> tune-ok (no heartbeats), open
    frameMax = args.readUInt32BE(2) || frameMax;
    socket.write(method(0, 10, 31, u16(args.readUInt16BE(0)), u32(frameMax), u16(0)));
    socket.write(method(0, 10, 40, shortstr(vhost), shortstr(""), Buffer.from([0])));
  } else if (key === "10.41") {  // open-ok -> channel.open
    socket.write(method(1, 20, 10, shortstr("")));
  } else if (key === "20.11") {  // channel open-ok -> confirm.select
    socket.write(method(1, 85, 10, Buffer.from([0])));
  } else if (key === "85.11") {  // select-ok -> publish every body
    for (const body of bodies) {
      socket.write(method(1, 60, 40, u16(0), shortstr(""), shortstr(queue), Buffer.from([0])));
      // content header: class 60, weight 0, size; flags content-type (bit 15) + delivery-mode (bit 12)
      socket.write(frame(2, 1, Buffer.concat([u16(60), u16(0), u64(body.length), u16(0x8000 | 0x1000),
        shortstr("application/json"), Buffer.from([2])])));
      for (let at = 0; at < body.length; at += frameMax - 8) {
        socket.write(frame(3, 1, body.subarray(at, at + frameMax - 8)));
      }
    }
    if (bodies.length === 0) done();
  } else if (key === "60.80") {  // basic.ack (a confirm)
    const tag = Number(args.readBigUInt64BE(0));
    confirmed = (args[8] & 1) ? tag : confirmed + 1;
    if (confirmed >= bodies.length) done();
  } else if (key === "60.120") {
    fail("RabbitMQ refused a message (nack)");
  } else if (key === "20.40" || key === "10.50") {
    fail(`closed by RabbitMQ: ${args.subarray(3, 3 + args[2]).toString()}`);
  } else if (key === "10.51") {
    console.log(`confirmed ${confirmed}`);
    process.exit(0);
  }
}

function done() {
  socket.write(method(0, 10, 50, u16(200), shortstr("bye"), u16(0), u16(0)));
}
