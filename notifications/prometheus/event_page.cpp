// The page served at GET / next to GET /events (event_page.hpp states the contract). It is kept
// in a raw string literal so that the library needs no build step and no resource files; every
// value that comes from the stream reaches the DOM through textContent or dataset, never as markup.
#include "event_page.hpp"

namespace notifications::prometheus::detail {

namespace {

// The frames it reads are described in include/notifications/event_stream.hpp: "id:", "event:"
// (the event's name, or "shutdown", or "notifications.gap"), "data:" (the envelope JSON),
// "retry:", and ": heartbeat" comments.
constexpr std::string_view kPage = R"page(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>notifications: events</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1em; color: #222; background: #fafafa; }
  h1 { font-size: 1.2em; margin: 0 0 .5em; }
  form { display: flex; gap: .5em; align-items: center; margin-bottom: .5em; }
  #pattern { font-family: ui-monospace, monospace; min-width: 20em; }
  #status { font-weight: bold; }
  #status[data-state="live"] { color: #176117; }
  #status[data-state="reconnecting"], #status[data-state="connecting"] { color: #8a5a00; }
  #status[data-state="error"], #status[data-state="server shut down"] { color: #a11; }
  #detail { color: #666; margin-left: .5em; }
  section { margin-top: 1em; }
  h2 { font-size: 1em; margin: 0 0 .3em; }
  table { border-collapse: collapse; font-family: ui-monospace, monospace; }
  th, td { text-align: left; padding: .1em .8em .1em 0; }
  td.number, th.number { text-align: right; }
  #events { list-style: none; padding: 0; margin: 0; font-family: ui-monospace, monospace; }
  #events li { padding: .15em 0; border-bottom: 1px solid #e4e4e4; display: flex; gap: 1em; }
  #events .time { color: #666; white-space: nowrap; }
  #events .name { font-weight: bold; white-space: nowrap; }
  #events .payload { overflow-wrap: anywhere; }
  #events li.notice { color: #a11; }
</style>
</head>
<body>
<h1>notifications: events</h1>
<form id="controls">
  <label for="pattern">pattern</label>
  <input id="pattern" name="pattern" value="&gt;" spellcheck="false" autocomplete="off">
  <button id="apply" type="submit">Apply</button>
  <span id="status" data-state="connecting">connecting</span><span id="detail"></span>
</form>
<section>
  <h2>rates (events per second over the last 10 s)</h2>
  <table id="rates">
    <thead><tr><th>name</th><th class="number">count</th><th class="number">events/s</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
<section>
  <h2>latest events (newest first, at most 200)</h2>
  <ol id="events"></ol>
</section>
<script>
'use strict';
(function () {
  const MAX_ROWS = 200;
  const RATE_WINDOW_S = 10;
  const MAX_RATE_NAMES = 1000;
  const MAX_PAYLOAD_CHARS = 4000;

  const pageQuery = new URLSearchParams(window.location.search);
  const token = pageQuery.get('access_token');
  const tokenPart = token ? '&access_token=' + encodeURIComponent(token) : '';

  const patternBox = document.getElementById('pattern');
  const statusLine = document.getElementById('status');
  const detailLine = document.getElementById('detail');
  const list = document.getElementById('events');
  const rateBody = document.querySelector('#rates tbody');

  let pattern = pageQuery.get('pattern') || '>';
  patternBox.value = pattern;
  let generation = 0;       // one per connect(); an older run stops at its next step
  let controller = null;    // aborts the running fetch
  let retryTimer = null;
  let retryMs = 2000;       // the server's "retry:" replaces it
  let lastEventId = '';     // sent back as last_event_id after a reconnect
  let shutDown = false;     // the server said "shutdown" on the current stream
  const rates = new Map();  // name -> {count, buckets: Map(second -> events)}

  function setStatus(state, detail) {
    statusLine.textContent = state;
    statusLine.dataset.state = state;
    detailLine.textContent = detail ? ' ' + detail : '';
  }

  function pad(n, width) { return String(n).padStart(width, '0'); }

  function formatTime(text) {
    if (typeof text !== 'string') return '';
    const d = new Date(text);
    if (isNaN(d.getTime())) return text;
    return pad(d.getHours(), 2) + ':' + pad(d.getMinutes(), 2) + ':' + pad(d.getSeconds(), 2) + '.' +
        pad(d.getMilliseconds(), 3);
  }

  function payloadText(payload) {
    let text;
    try { text = JSON.stringify(payload); } catch (e) { text = String(payload); }
    if (text === undefined) text = '';
    return text.length > MAX_PAYLOAD_CHARS ? text.slice(0, MAX_PAYLOAD_CHARS) + '...' : text;
  }

  function cell(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    element.textContent = text;
    return element;
  }

  // The text/event-stream format: lines end with CRLF, LF or CR; "field: value" (one space after
  // the colon dropped); a line starting with ':' is a comment; a blank line ends a frame, which is
  // dispatched when it had data.
  function makeParser(onFrame) {
    let buffer = '';
    let data = [];
    let eventName = '';
    let id = null;
    function line(text) {
      if (text === '') {
        if (data.length > 0) onFrame({ event: eventName || 'message', data: data.join('\n'), id: id });
        data = [];
        eventName = '';
        id = null;
        return;
      }
      if (text[0] === ':') return;
      const colon = text.indexOf(':');
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? '' : text.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'event') eventName = value;
      else if (field === 'id') { if (value.indexOf('\0') < 0) { id = value; lastEventId = value; } }
      else if (field === 'retry') { if (/^[0-9]+$/.test(value)) retryMs = Math.min(Math.max(Number(value), 250), 60000); }
    }
    return function feed(chunk) {
      buffer += chunk;
      let start = 0;
      for (let i = 0; i < buffer.length; i++) {
        const c = buffer[i];
        if (c !== '\n' && c !== '\r') continue;
        if (c === '\r' && i + 1 === buffer.length) break;  // maybe the first half of CRLF
        line(buffer.slice(start, i));
        if (c === '\r' && buffer[i + 1] === '\n') i++;
        start = i + 1;
      }
      buffer = buffer.slice(start);
    };
  }

  function countEvent(name) {
    const second = Math.floor(Date.now() / 1000);
    let rate = rates.get(name);
    if (!rate) {
      rate = { count: 0, buckets: new Map() };
      rates.set(name, rate);
    }
    rate.count++;
    rate.buckets.set(second, (rate.buckets.get(second) || 0) + 1);
  }

  function renderRates() {
    const now = Math.floor(Date.now() / 1000);
    const rows = [];
    for (const [name, rate] of rates) {
      let recent = 0;
      for (const [second, n] of rate.buckets) {
        if (second <= now - RATE_WINDOW_S) rate.buckets.delete(second);
        else recent += n;
      }
      if (recent === 0 && rates.size > MAX_RATE_NAMES) { rates.delete(name); continue; }
      rows.push({ name: name, count: rate.count, perSecond: recent / RATE_WINDOW_S });
    }
    rows.sort((a, b) => b.perSecond - a.perSecond || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const fragment = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement('tr');
      tr.dataset.name = row.name;
      tr.appendChild(cell('td', 'name', row.name));
      tr.appendChild(cell('td', 'number', String(row.count)));
      tr.appendChild(cell('td', 'number', row.perSecond.toFixed(1)));
      fragment.appendChild(tr);
    }
    rateBody.replaceChildren(fragment);
  }

  // Adds the rows of one read (only its last MAX_ROWS matter), newest first, and trims the list.
  function render(rows) {
    const fragment = document.createDocumentFragment();
    for (let i = rows.length - 1; i >= Math.max(0, rows.length - MAX_ROWS); i--) {
      const row = rows[i];
      const li = document.createElement('li');
      if (row.notice !== undefined) {
        li.className = 'notice';
        li.appendChild(cell('span', 'time', formatTime(new Date().toISOString())));
        li.appendChild(cell('span', 'payload', row.notice));
      } else {
        li.className = 'event';
        li.dataset.name = row.name;
        if (row.id !== null) li.dataset.id = row.id;
        const time = cell('span', 'time', formatTime(row.time));
        if (typeof row.time === 'string') time.title = row.time;
        li.appendChild(time);
        li.appendChild(cell('span', 'name', row.name));
        li.appendChild(cell('span', 'payload', payloadText(row.payload)));
      }
      fragment.appendChild(li);
    }
    list.insertBefore(fragment, list.firstChild);
    while (list.children.length > MAX_ROWS) list.removeChild(list.lastChild);
  }

  function onFrame(frame, rows) {
    if (frame.event === 'shutdown') {
      shutDown = true;
      setStatus('server shut down', 'reconnecting later');
      return;
    }
    if (frame.event === 'notifications.gap') {
      rows.push({ notice: 'gap: some events were not replayed ' + frame.data });
      return;
    }
    let envelope = null;
    try { envelope = JSON.parse(frame.data); } catch (e) { envelope = null; }
    if (envelope === null || typeof envelope !== 'object') envelope = { payload: frame.data };
    const name = typeof envelope.name === 'string' ? envelope.name : frame.event;
    countEvent(name);
    rows.push({ name: name, time: envelope.time, payload: envelope.payload, id: frame.id });
  }

  function scheduleRetry(detail) {
    const delay = shutDown ? Math.max(retryMs, 5000) : retryMs;
    if (shutDown) setStatus('server shut down', 'reconnecting in ' + Math.round(delay / 1000) + ' s');
    else setStatus('reconnecting', detail + '; retrying in ' + Math.round(delay / 1000) + ' s');
    retryTimer = setTimeout(() => connect(false), delay);
  }

  async function connect(first) {
    const run = ++generation;
    clearTimeout(retryTimer);
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    shutDown = false;
    setStatus(first ? 'connecting' : 'reconnecting');
    let url = '/events?pattern=' + encodeURIComponent(pattern) + tokenPart;
    if (lastEventId) url += '&last_event_id=' + encodeURIComponent(lastEventId);
    let detail;
    try {
      const response = await fetch(url, { signal: signal, cache: 'no-store', headers: { Accept: 'text/event-stream' } });
      if (run !== generation) return;
      if (!response.ok) {
        const text = (await response.text()).slice(0, 300);
        if (run !== generation) return;
        if (response.status >= 400 && response.status < 500) {
          // A bad pattern or token: asking again would get the same answer.
          setStatus('error', 'HTTP ' + response.status + ': ' + text);
          return;
        }
        throw new Error('HTTP ' + response.status + ': ' + text);
      }
      if (!response.body) throw new Error('this browser cannot read a streamed response');
      setStatus('live');
      const reader = response.body.getReader();
      const decoder = new TextDecoder('utf-8');
      let rows = [];
      const feed = makeParser((frame) => onFrame(frame, rows));
      for (;;) {
        const { value, done } = await reader.read();
        if (run !== generation) { reader.cancel().catch(() => {}); return; }
        if (done) break;
        rows = [];
        feed(decoder.decode(value, { stream: true }));
        if (rows.length > 0) render(rows);
      }
      detail = 'the server ended the stream';
    } catch (error) {
      if (run !== generation || signal.aborted) return;
      detail = String((error && error.message) || error);
    }
    scheduleRetry(detail);
  }

  document.getElementById('controls').addEventListener('submit', (event) => {
    event.preventDefault();
    pattern = patternBox.value.trim() || '>';
    patternBox.value = pattern;
    lastEventId = '';
    list.replaceChildren();
    rates.clear();
    renderRates();
    const here = new URL(window.location.href);
    here.searchParams.set('pattern', pattern);
    window.history.replaceState(null, '', here.toString());
    connect(true);
  });

  setInterval(renderRates, 1000);
  connect(true);
})();
</script>
</body>
</html>
)page";

}  // namespace

std::string_view event_page_html() noexcept { return kPage; }

}  // namespace notifications::prometheus::detail
