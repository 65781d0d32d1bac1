// A small browser client for harpy's channels endpoint (the Centrifuge client protocol v2,
// JSON): connect, subscribe with recovery, publish, presence, join and leave, pings answered,
// and reconnection with backoff that recovers what was published while it was away.
// The official `centrifuge` SDK (npm) speaks the same protocol; this file needs no build step.
"use strict";

class ChannelsClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.state = "disconnected";
    this.subs = new Map();         // channel -> Subscription
    this.pending = new Map();      // command id -> {resolve, reject}
    this.nextId = 1;
    this.listeners = {};
    this.attempt = 0;
    this.stopped = false;
    this.socket = null;
    this.client = "";
  }

  on(event, fn) { (this.listeners[event] ||= []).push(fn); return this; }
  emit(event, value) { for (const fn of this.listeners[event] || []) fn(value); }

  setState(state, detail) {
    this.state = state;
    this.emit("state", { state, ...detail });
  }

  connect() {
    this.stopped = false;
    this.setState(this.attempt ? "reconnecting" : "connecting");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => this.handshake();
    socket.onmessage = (event) => this.receive(event.data);
    socket.onclose = (event) => this.closed(socket, event.code, event.reason);
  }

  disconnect() {
    this.stopped = true;
    if (this.socket) this.socket.close(1000, "bye");
  }

  // The connect command and every subscription's (with its position) go in one frame.
  handshake() {
    const commands = [this.command("connect", {
      name: "harpy-chat", data: this.options.data || {}, token: this.options.token || "",
    }, (result) => {
      this.client = result.client;
      this.pong = !!result.pong;
      this.attempt = 0;
      this.setState("connected", { client: result.client });
    })];
    for (const sub of this.subs.values()) commands.push(sub.subscribeCommand());
    this.write(commands);
  }

  command(method, params, done, failed) {
    const id = this.nextId++;
    this.pending.set(id, { done: done || (() => {}), failed: failed || ((e) => this.emit("error", e)) });
    return { id, [method]: params };
  }

  call(method, params) {
    return new Promise((resolve, reject) => {
      if (this.state !== "connected") { reject(new Error("not connected")); return; }
      this.write([this.command(method, params, resolve, (e) => reject(new Error(e.message)))]);
    });
  }

  write(commands) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(commands.map((c) => JSON.stringify(c)).join("\n"));
    }
  }

  receive(data) {
    for (const line of String(data).trim().split("\n")) {
      if (!line) continue;
      const reply = JSON.parse(line);
      if (!reply.id && !reply.push) {           // a ping: {}
        if (this.pong) this.write([{}]);
        continue;
      }
      if (reply.push) { this.pushed(reply.push); continue; }
      const waiting = this.pending.get(reply.id);
      if (!waiting) continue;
      this.pending.delete(reply.id);
      if (reply.error) waiting.failed(reply.error);
      else waiting.done(Object.values(reply).find((v) => typeof v === "object") || {});
    }
  }

  pushed(push) {
    const sub = this.subs.get(push.channel);
    if (push.disconnect) { this.emit("disconnect", push.disconnect); return; }
    if (!sub) return;
    if (push.pub) sub.publication(push.pub);
    else if (push.join) sub.emit("join", push.join.info);
    else if (push.leave) sub.emit("leave", push.leave.info);
    else if (push.unsubscribe) sub.unsubscribed(push.unsubscribe);
  }

  closed(socket, code, reason) {
    if (socket !== this.socket) return;
    for (const waiting of this.pending.values()) waiting.failed({ code: 0, message: "disconnected" });
    this.pending.clear();
    for (const sub of this.subs.values()) sub.subscribed = false;
    // 3500-3999 and 4500-4999: the server says do not come back (as the SDKs do).
    const terminal = (code >= 3500 && code < 4000) || (code >= 4500 && code < 5000);
    if (this.stopped || terminal) {
      this.setState("disconnected", { code, reason });
      return;
    }
    this.attempt += 1;
    const delay = Math.min(8000, 250 * 2 ** Math.min(this.attempt, 5)) * (0.75 + Math.random() / 2);
    this.setState("reconnecting", { code, reason, delay });
    setTimeout(() => { if (!this.stopped) this.connect(); }, delay);
  }

  subscribe(channel) {
    let sub = this.subs.get(channel);
    if (!sub) {
      sub = new Subscription(this, channel);
      this.subs.set(channel, sub);
      if (this.state === "connected") this.write([sub.subscribeCommand()]);
    }
    return sub;
  }

  unsubscribe(channel) {
    const sub = this.subs.get(channel);
    if (!sub) return;
    this.subs.delete(channel);
    if (this.state === "connected") this.write([this.command("unsubscribe", { channel })]);
  }
}

class Subscription {
  constructor(client, channel) {
    this.client = client;
    this.channel = channel;
    this.listeners = {};
    this.offset = null;    // the position of the last publication seen: recovery starts there
    this.epoch = "";
    this.subscribed = false;
  }

  on(event, fn) { (this.listeners[event] ||= []).push(fn); return this; }
  emit(event, value) { for (const fn of this.listeners[event] || []) fn(value); }

  subscribeCommand() {
    const params = { channel: this.channel, join_leave: true };
    if (this.offset !== null) Object.assign(params, { recover: true, offset: this.offset, epoch: this.epoch });
    return this.client.command("subscribe", params, (result) => this.subscribedTo(result),
      (error) => this.emit("error", error));
  }

  subscribedTo(result) {
    const recovering = this.offset !== null;
    this.subscribed = true;
    for (const pub of result.publications || []) this.publication(pub);
    if (result.epoch !== undefined) this.epoch = result.epoch;
    if (result.offset !== undefined && (this.offset === null || !result.recovered)) this.offset = result.offset;
    this.emit("subscribed", { recovering, recovered: !!result.recovered });
  }

  publication(pub) {
    if (pub.offset !== undefined) this.offset = pub.offset;
    this.emit("publication", pub);
  }

  unsubscribed(push) {
    this.subscribed = false;
    if (push.code >= 2500) {   // the server asks for a resubscription (and recovery)
      this.client.write([this.subscribeCommand()]);
    } else {
      this.client.subs.delete(this.channel);
      this.emit("unsubscribed", push);
    }
  }

  publish(data) { return this.client.call("publish", { channel: this.channel, data }); }
  presence() { return this.client.call("presence", { channel: this.channel }); }
  history(limit) { return this.client.call("history", { channel: this.channel, limit }); }
}

window.ChannelsClient = ChannelsClient;
