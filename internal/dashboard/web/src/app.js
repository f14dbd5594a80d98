// cove's dashboard: one page, views chosen by the URL's fragment
// (#/ the sessions, #/s/ID one session, #/templates, #/audit, #/nodes). It speaks cove's JSON API under
// /v1 with the sign-in cookie (internal/dashboard puts the token behind it
// into the Authorization header), so the server's policy decides what it
// shows. Text from the server goes into the page as text only (never
// innerHTML).
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';

const POLL_MS = 2000;

// The terminal's colours on its black: xterm.js's default red, blue,
// magenta and bright black are below WCAG AA's 4.5:1 there; these pass.
const TERM_THEME = { background: '#000000', foreground: '#ffffff', red: '#f14c4c', blue: '#3b8eea', magenta: '#d670d6', brightBlack: '#8a8a8a' };
const $ = (id) => document.getElementById(id);

let me = null; // {kind, user, csrf, expires} once signed in
let pollTimer = null;
let sessionsCache = [];
let current = null; // the session view's state: {id, term, fit, ws, ...}

class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// api calls the JSON API with the cookie; state-changing calls carry the
// CSRF token. A 401 (sign-in expired, token revoked) goes back to the
// sign-in form, saying why.
async function api(path, opts = {}) {
  const o = { credentials: 'same-origin', ...opts, headers: { ...(opts.headers || {}) } };
  const method = (o.method || 'GET').toUpperCase();
  if (method !== 'GET' && method !== 'HEAD' && me) o.headers['X-Cove-CSRF'] = me.csrf;
  let r;
  try {
    r = await fetch(path, o);
  } catch (e) {
    throw new APIError(0, 'unreachable', 'the server cannot be reached (' + e.message + '); retrying');
  }
  if (r.ok) return r;
  let code = 'http_' + r.status;
  let msg = r.status + ' ' + r.statusText;
  try {
    const body = await r.json();
    if (body && body.error) {
      code = body.error.code;
      msg = body.error.message;
    }
  } catch (e) { /* not JSON: keep the status */ }
  if (r.status === 401) signedOut(msg);
  throw new APIError(r.status, code, msg);
}

async function apiJSON(path, opts) {
  const r = await api(path, opts);
  if (r.status === 204) return null;
  return r.json();
}

function banner(msg) {
  const b = $('banner');
  b.textContent = msg || '';
  b.hidden = !msg;
}

function show(view) {
  if (view !== 'list') stopWatch();
  for (const v of ['loading', 'signin', 'list', 'session', 'templates', 'audit', 'nodes']) $('view-' + v).hidden = v !== view;
}

// ---- sign-in ----

function signedOut(msg) {
  me = null;
  stopPolling();
  stopWatch();
  closeSession();
  $('who').hidden = true;
  $('signout').hidden = true;
  show('signin');
  const e = $('signin-error');
  e.textContent = msg || '';
  e.hidden = !msg;
  banner('');
}

// The OpenID Connect issuers the server offers (GET /dash/oidc): a link
// each, to /dash/oidc/start, which goes on to the issuer and back.
async function listIssuers() {
  try {
    const r = await fetch('/dash/oidc', { credentials: 'same-origin' });
    if (!r.ok) return;
    const list = await r.json();
    const ul = $('signin-oidc-list');
    ul.replaceChildren();
    for (const is of list) {
      const a = document.createElement('a');
      a.href = is.start;
      a.className = 'button';
      a.textContent = 'Sign in with ' + is.issuer;
      const li = document.createElement('li');
      li.append(a);
      ul.append(li);
    }
    $('signin-oidc').hidden = list.length === 0;
  } catch (e) { /* the form still works */ }
}


function signedIn(who) {
  me = who;
  const name = who.user ? who.user.name : who.kind;
  $('who').textContent = 'Signed in as ' + name;
  $('who').hidden = false;
  $('signout').hidden = false;
  $('signin-error').hidden = true;
  route();
}

async function start() {
  // A failed OpenID Connect sign-in comes back as #signin-error=MESSAGE.
  let oidcError = '';
  if (location.hash.startsWith('#signin-error=')) {
    oidcError = new URLSearchParams(location.hash.slice(1)).get('signin-error') || '';
    history.replaceState(null, '', '/');
  }
  listIssuers();
  try {
    const r = await fetch('/dash/me', { credentials: 'same-origin' });
    if (r.ok) {
      signedIn(await r.json());
      return;
    }
    let msg = '';
    if (r.status !== 401) msg = 'the server answered ' + r.status;
    else {
      try { msg = (await r.json()).error.message; } catch (e) { /* none */ }
      if (msg.startsWith('not signed in')) msg = '';
    }
    signedOut(oidcError || msg);
  } catch (e) {
    show('loading');
    banner('The server cannot be reached; retrying…');
    setTimeout(start, POLL_MS);
  }
}

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = $('signin-error');
  err.hidden = true;
  $('signin-submit').disabled = true;
  try {
    const body = new URLSearchParams({ token: $('signin-token').value });
    const r = await fetch('/dash/signin', { method: 'POST', body, credentials: 'same-origin' });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : 'sign-in failed: ' + r.status);
    $('signin-token').value = '';
    signedIn(j);
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  } finally {
    $('signin-submit').disabled = false;
  }
});

$('signout').addEventListener('click', async () => {
  try {
    await fetch('/dash/signout', { method: 'POST', credentials: 'same-origin', headers: { 'X-Cove-CSRF': me ? me.csrf : '' } });
  } finally {
    signedOut('Signed out.');
  }
});

// ---- routing ----

function route() {
  if (!me) return;
  const m = location.hash.match(/^#\/s\/([A-Za-z0-9._-]+)$/);
  if (m) openSession(m[1]);
  else if (location.hash === '#/templates') openTemplates();
  else if (location.hash === '#/audit') openAudit();
  else if (location.hash === '#/nodes') openNodes();
  else openList();
}
window.addEventListener('hashchange', route);

function stopPolling() {
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = null;
}

function poll(fn) {
  stopPolling();
  const tick = async () => {
    await fn();
    if (me) pollTimer = setTimeout(tick, POLL_MS);
  };
  tick();
}

// ---- the sessions list ----

function openList() {
  closeSession();
  show('list');
  document.title = 'Sessions · cove';
  stopPolling(); // the stream's first line is the list: no GET beside it
  startWatch();
}

// The list is pushed: GET /v1/sessions/watch sends it (NDJSON, one
// {"sessions":[…]} a line, the same list GET /v1/sessions answers) at
// once and after each change, so the list view asks for nothing else;
// when the stream cannot be opened or ends (a server restart, a proxy),
// the 2 s poll takes over until the stream, tried again after
// WATCH_RETRY_MS, delivers.
const WATCH_RETRY_MS = 5000;
const WATCH_FIRST_MS = 3000;
let watch = null; // {ctrl, live} while a stream is open or being opened
let watchRetry = null;

function stopWatch() {
  if (watchRetry) clearTimeout(watchRetry);
  watchRetry = null;
  if (watch) {
    clearTimeout(watch.slow);
    watch.ctrl.abort();
  }
  watch = null;
  liveMode('');
}

function liveMode(mode) {
  $('sessions').dataset.live = mode;
  renderCount();
}

function startWatch() {
  stopWatch();
  const w = { ctrl: new AbortController(), live: false };
  watch = w;
  // A stream that says nothing (a proxy that buffers it) must not leave
  // the list empty: the poll starts if no list came within WATCH_FIRST_MS.
  w.slow = setTimeout(() => { if (watch === w && !w.live) poll(refreshList); }, WATCH_FIRST_MS);
  (async () => {
    try {
      const r = await fetch('/v1/sessions/watch', { credentials: 'same-origin', signal: w.ctrl.signal });
      if (!r.ok || !r.body) throw new Error('watch: ' + r.status);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done || watch !== w) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.trim()) continue;
          const j = JSON.parse(line);
          if (!w.live) {
            w.live = true;
            clearTimeout(w.slow);
            stopPolling();
            liveMode('push');
          }
          sessionsCache = j.sessions || [];
          banner('');
          renderList();
        }
      }
    } catch (e) { /* the poll takes over below */ }
    if (watch !== w) return; // stopped: another view, or signed out
    clearTimeout(w.slow);
    watch = null;
    if (!me) return;
    liveMode('poll');
    poll(refreshList);
    watchRetry = setTimeout(() => { watchRetry = null; if (me && !$('view-list').hidden) startWatch(); }, WATCH_RETRY_MS);
  })();
}

async function refreshList() {
  try {
    sessionsCache = ((await apiJSON('/v1/sessions')) || {}).sessions || [];
    banner('');
    renderList();
  } catch (e) {
    if (e.status !== 401) banner(e.message);
  }
}

function age(t) {
  const s = Math.max(0, (Date.now() - Date.parse(t)) / 1000);
  if (s < 60) return Math.floor(s) + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm';
  if (s < 86400) return Math.floor(s / 3600) + 'h';
  return Math.floor(s / 86400) + 'd';
}

function bytes(n) {
  if (!n) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

function waitsFor(s) {
  if (!s.waiting) return s.state === 'parked' ? (s.auto_wake ? 'a wake or an exec' : 'a wake') : '';
  let w = (s.waiting.until || []).join(' or ');
  if (s.waiting.deadline) w += (w ? '; ' : '') + 'timeout ' + new Date(s.waiting.deadline).toLocaleString();
  return w;
}

function snapshotSize(s) {
  if (s.stored_bytes) return bytes(s.stored_bytes) + ' stored';
  if (s.snapshot && s.snapshot.disk_bytes) return bytes(s.snapshot.disk_bytes);
  return s.stored ? 'stored' : '';
}

function rowText(s) {
  return [s.id, s.state, s.owner, s.agent, s.template, s.node, s.image].join(' ').toLowerCase();
}

function cell(text) {
  const td = document.createElement('td');
  td.textContent = text == null ? '' : String(text);
  return td;
}

function actionButton(label, fn, cls) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener('click', async () => {
    b.disabled = true;
    try { await fn(); } catch (e) { if (e.status !== 401) banner(e.message); } finally { b.disabled = false; }
  });
  return b;
}

// replaceRows swaps a table body's rows for new ones, keeping the
// keyboard's focus on the same control of the same row (rows match by
// dataset[key]): the pages rebuild their rows at every refresh, and a
// keyboard user would otherwise be thrown back to the page's top.
function replaceRows(tbody, rows, key) {
  const controls = (tr) => Array.from(tr.querySelectorAll('a, button, input'));
  const a = document.activeElement;
  let keep = null;
  if (a && a !== tbody && tbody.contains(a)) {
    const tr = a.closest('tr');
    if (tr) keep = { k: tr.dataset[key], i: controls(tr).indexOf(a) };
  }
  tbody.replaceChildren(...rows);
  if (!keep) return;
  const tr = rows.find((r) => r.dataset[key] === keep.k);
  const el = tr && controls(tr)[keep.i];
  if (el) el.focus();
}

let listShown = 0;
let rowCache = new Map(); // session id → {sig, tr, age}: the rows shown

// placeRows makes tbody's rows exactly rows, in order, moving only the
// rows out of place (most stay where they are: nothing to lay out
// again); the focus stays on the same control of a row rebuilt or moved.
function placeRows(tbody, rows, key) {
  const a = document.activeElement;
  const focusedRow = a && tbody.contains(a) ? a.closest('tr') : null;
  const keep = focusedRow ? { k: focusedRow.dataset[key], i: Array.from(focusedRow.querySelectorAll('a, button, input')).indexOf(a) } : null;
  const want = new Set(rows);
  for (const tr of Array.from(tbody.children)) if (!want.has(tr)) tr.remove();
  rows.forEach((tr, i) => {
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  if (keep && document.activeElement !== a) { // rebuilt, or moved (a move blurs)
    const tr = rows.find((r) => r.dataset[key] === keep.k);
    const el = tr && tr.querySelectorAll('a, button, input')[keep.i];
    if (el) el.focus();
  }
}

// renderCount says how many rows show, and how the list keeps current.
function renderCount() {
  const mode = $('sessions').dataset.live;
  const how = mode === 'push' ? ' · live' : mode === 'poll' ? ' · refreshed every 2 s' : '';
  $('count').textContent = listShown + ' of ' + sessionsCache.length + how;
}

function renderList() {
  const t0 = performance.now();
  const q = $('filter').value.trim().toLowerCase();
  const rows = sessionsCache.filter((s) => !q || rowText(s).includes(q));
  const tbody = $('sessions').querySelector('tbody');
  const out = [];
  const built = new Map();
  for (const s of rows) {
    // A session whose record did not change keeps its row (only its
    // age is brought up to date): a change among a thousand sessions
    // builds one row, not a thousand.
    const sig = JSON.stringify(s);
    const old = rowCache.get(s.id);
    if (old && old.sig === sig) {
      const a = age(s.created_at);
      if (old.age.textContent !== a) old.age.textContent = a;
      built.set(s.id, old);
      out.push(old.tr);
      continue;
    }
    const tr = document.createElement('tr');
    tr.dataset.id = s.id;
    const idc = document.createElement('td');
    const a = document.createElement('a');
    a.href = '#/s/' + encodeURIComponent(s.id);
    a.textContent = s.id;
    idc.appendChild(a);
    tr.appendChild(idc);
    const st = cell(s.state);
    st.className = 'state-cell';
    st.dataset.state = s.state;
    tr.appendChild(st);
    tr.appendChild(cell(s.owner));
    tr.appendChild(cell(s.agent));
    tr.appendChild(cell(s.template ? s.template + (s.template_version ? ' v' + s.template_version : '') : ''));
    tr.appendChild(cell(s.node));
    const agec = cell(age(s.created_at));
    tr.appendChild(agec);
    tr.appendChild(cell(s.memory_mib ? s.memory_mib + ' MiB' : ''));
    tr.appendChild(cell(snapshotSize(s)));
    tr.appendChild(cell(waitsFor(s)));
    const act = document.createElement('td');
    act.className = 'actions';
    act.appendChild(actionButton('Park', () => park(s.id)));
    act.appendChild(actionButton('Wake', () => wake(s.id)));
    act.appendChild(actionButton('Remove', () => remove(s.id), 'danger'));
    tr.appendChild(act);
    built.set(s.id, { sig, tr, age: agec });
    out.push(tr);
  }
  rowCache = built;
  placeRows(tbody, out, 'id');
  $('empty').hidden = sessionsCache.length !== 0;
  listShown = rows.length;
  renderCount();
  // The moment the list first shows, and how long each render took to
  // build and swap the rows (covebench -only dashboard reads them).
  if (performance.getEntriesByName('cove:list').length === 0) performance.mark('cove:list');
  performance.clearMeasures('cove:render'); // the last only: a page stays open for days
  performance.measure('cove:render', { start: t0, end: performance.now() });
}
$('filter').addEventListener('input', renderList);

async function park(id) {
  await api('/v1/sessions/' + encodeURIComponent(id) + '/park', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
  refreshCurrent();
}

async function wake(id) {
  await api('/v1/sessions/' + encodeURIComponent(id) + '/wake', { method: 'POST' });
  refreshCurrent();
}

async function remove(id) {
  if (!window.confirm('Remove session ' + id + '? Its VM and files are deleted.')) return;
  await api('/v1/sessions/' + encodeURIComponent(id), { method: 'DELETE' });
  if (current && current.id === id) location.hash = '#/';
  else refreshCurrent();
}

function refreshCurrent() {
  if (current) refreshSession();
  else refreshList();
}

$('create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const kind = $('create-kind').value;
  const name = $('create-name').value.trim();
  const req = {};
  if (name) req[kind] = name;
  const agent = $('create-agent').value.trim();
  if (agent) req.agent = agent;
  const b = $('create-submit');
  b.disabled = true;
  banner('Creating a session…');
  try {
    const s = await apiJSON('/v1/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(req) });
    banner('');
    location.hash = '#/s/' + encodeURIComponent(s.id);
  } catch (e) {
    if (e.status !== 401) banner('Create: ' + e.message);
  } finally {
    b.disabled = false;
  }
});

// ---- one session ----

function closeSession() {
  if (!current) return;
  current.closed = true;
  if (current.ws) current.ws.close();
  window.removeEventListener('resize', current.onResize);
  current.term.dispose();
  current = null;
}

function openSession(id) {
  closeSession();
  stopPolling();
  show('session');
  document.title = id + ' · cove';
  $('s-id').textContent = id;
  $('s-state').textContent = '';
  $('s-detail').textContent = '';
  for (const b of ['s-park', 's-wake', 's-remove']) $(b).disabled = false;
  $('files').querySelector('tbody').replaceChildren();
  $('events').replaceChildren();
  $('commands').replaceChildren();
  const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000, convertEol: false, theme: TERM_THEME });
  const fit = new FitAddon();
  term.loadAddon(fit);
  const el = $('terminal');
  el.replaceChildren();
  term.open(el);
  fit.fit();
  current = { id, term, fit, ws: null, open: false, pending: [], closed: false, state: '' };
  current.onResize = () => { try { fit.fit(); } catch (e) { /* hidden */ } };
  window.addEventListener('resize', current.onResize);
  // Tab belongs to the shell (completion); Esc then Tab (or Shift+Tab)
  // moves the focus out of the terminal instead, so that a keyboard user
  // is never trapped in it. The Esc still reaches the shell.
  let escaped = false;
  term.attachCustomKeyEventHandler((ev) => {
    if (ev.type !== 'keydown') return true;
    if (ev.key === 'Tab' && escaped && !ev.ctrlKey && !ev.altKey && !ev.metaKey) {
      escaped = false;
      return false; // not the shell's: the browser moves the focus
    }
    escaped = ev.key === 'Escape';
    return true;
  });
  term.onData((d) => typed(d));
  term.onResize(({ rows, cols }) => sendEvent({ type: 'resize', rows, cols }));
  poll(refreshSession);
  listFiles();
  loadEvents();
  connect();
  term.focus();
}

async function refreshSession() {
  const c = current;
  if (!c) return;
  try {
    const s = await apiJSON('/v1/sessions/' + encodeURIComponent(c.id));
    if (c !== current) return;
    c.state = s.state;
    const st = $('s-state');
    st.textContent = s.state;
    st.className = 'state state-' + s.state;
    const parts = [s.template ? 'template ' + s.template : 'image ' + s.image, 'owner ' + s.owner];
    if (s.agent) parts.push('agent ' + s.agent);
    if (s.node) parts.push('node ' + s.node);
    parts.push(s.memory_mib + ' MiB', 'age ' + age(s.created_at));
    const w = waitsFor(s);
    if (w) parts.push('waits for ' + w);
    if (s.error) parts.push('error: ' + s.error);
    $('s-detail').textContent = parts.join(' · ');
    if (!c.since) {
      c.since = s.created_at;
      loadCommands();
    }
    // An exec stream outlives a park: the shell is paused, and what is
    // typed into it wakes the session (unless it wakes on no exec).
    if (c.open) {
      if (s.state === 'parked') termStatus('The session is parked: the shell is paused' + (s.auto_wake ? '; typing wakes it.' : '.'));
      else if (s.state === 'waking') termStatus('Waking the session…');
      else if (s.state === 'running') termStatus('Connected.');
    }
    banner('');
  } catch (e) {
    if (c !== current || e.status === 401) return;
    if (e.status === 404) {
      banner('Session ' + c.id + ' no longer exists (removed, or not yours to see).');
      $('s-state').textContent = 'gone';
      c.gone = true;
      for (const b of ['s-park', 's-wake', 's-remove']) $(b).disabled = true;
      termStatus('The session no longer exists.');
      stopPolling();
      return;
    }
    banner(e.message);
  }
}

$('s-park').addEventListener('click', () => current && park(current.id).catch((e) => banner(e.message)));
$('s-wake').addEventListener('click', () => current && wake(current.id).catch((e) => banner(e.message)));
$('s-remove').addEventListener('click', () => current && remove(current.id).catch((e) => banner(e.message)));

// The terminal: a shell on a PTY over the exec WebSocket. When it ends
// (the shell exits, the session parks, the server restarts), a key
// opens a new one: an exec wakes a parked session that wakes on use.

function b64encode(str) {
  const b = new TextEncoder().encode(str);
  let s = '';
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s);
}

function b64decode(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function termStatus(msg) {
  $('term-status').textContent = msg;
}

function sendEvent(ev) {
  const c = current;
  if (!c || !c.ws || !c.open) return false;
  c.ws.send(JSON.stringify(ev));
  return true;
}

function typed(d) {
  const c = current;
  if (!c) return;
  if (c.open) {
    sendEvent({ type: 'stdin', data: b64encode(d) });
    return;
  }
  if (c.gone) return;
  c.pending.push(d);
  if (!c.ws) connect();
}

function connect() {
  const c = current;
  if (!c || c.ws) return;
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(proto + '//' + location.host + '/v1/sessions/' + encodeURIComponent(c.id) + '/exec/ws');
  c.ws = ws;
  c.exited = null;
  termStatus(c.state === 'parked' ? 'Waking the session and connecting…' : 'Connecting…');
  ws.onopen = () => {
    ws.send(JSON.stringify({ argv: ['/bin/sh', '-l'], tty: true, rows: c.term.rows, cols: c.term.cols, env: { TERM: 'xterm-256color' } }));
    c.open = true;
    termStatus('Connected.');
    for (const d of c.pending.splice(0)) ws.send(JSON.stringify({ type: 'stdin', data: b64encode(d) }));
  };
  ws.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (e) { return; }
    switch (ev.type) {
      case 'stdout':
      case 'stderr':
        if (ev.data) c.term.write(b64decode(ev.data));
        break;
      case 'exit':
        c.exited = ev.signal ? 'signal ' + ev.signal : 'exit ' + ev.exit_code;
        break;
      case 'error':
        c.term.write('\r\n\x1b[31m' + (ev.error ? ev.error.message : 'error') + '\x1b[0m\r\n');
        break;
      default:
    }
  };
  ws.onclose = (ev) => {
    if (c.ws !== ws) return;
    c.ws = null;
    c.open = false;
    if (c.closed || c.gone) return;
    const why = c.exited ? 'The shell ended (' + c.exited + ').' : 'Disconnected' + (ev.reason ? ': ' + ev.reason : '') + '.';
    termStatus(why + ' Press a key to start a new shell.');
    c.term.write('\r\n\x1b[2m[' + why + ' Press a key to reconnect.]\x1b[0m\r\n');
    refreshSession();
  };
}

// ---- files ----

function dirPath() {
  let p = $('files-path').value.trim() || '/';
  if (!p.startsWith('/')) p = '/' + p;
  return p.replace(/\/+$/, '') || '/';
}

function joinPath(dir, name) {
  return (dir === '/' ? '' : dir) + '/' + name;
}

async function listFiles() {
  const c = current;
  if (!c) return;
  const dir = dirPath();
  const tbody = $('files').querySelector('tbody');
  try {
    const j = await apiJSON('/v1/sessions/' + encodeURIComponent(c.id) + '/files/list?path=' + encodeURIComponent(dir));
    const rows = [];
    for (const f of j.files || []) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      if (f.is_dir) {
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = f.name + '/';
        b.addEventListener('click', () => { $('files-path').value = joinPath(dir, f.name); listFiles(); });
        td.appendChild(b);
      } else {
        const a = document.createElement('a');
        a.href = '/v1/sessions/' + encodeURIComponent(c.id) + '/files?path=' + encodeURIComponent(joinPath(dir, f.name));
        a.download = f.name;
        a.textContent = f.name;
        td.appendChild(a);
      }
      tr.appendChild(td);
      tr.appendChild(cell(f.is_dir ? '' : bytes(f.size) || '0 B'));
      tr.appendChild(cell(new Date(f.mod_time).toLocaleString()));
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  } catch (e) {
    if (e.status !== 401) banner('Files: ' + e.message);
  }
}

$('files-form').addEventListener('submit', (ev) => { ev.preventDefault(); listFiles(); });

$('upload-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const c = current;
  const file = $('upload-file').files[0];
  if (!c || !file) { banner('Choose a file to upload.'); return; }
  const b = $('upload-submit');
  b.disabled = true;
  try {
    const p = joinPath(dirPath(), file.name);
    await api('/v1/sessions/' + encodeURIComponent(c.id) + '/files?path=' + encodeURIComponent(p), { method: 'PUT', body: file, headers: { 'Content-Type': 'application/octet-stream' } });
    banner('Uploaded ' + p + '.');
    listFiles();
  } catch (e) {
    if (e.status !== 401) banner('Upload: ' + e.message);
  } finally {
    b.disabled = false;
  }
});

// ---- events ----

async function loadEvents() {
  const c = current;
  if (!c) return;
  try {
    const page = await apiJSON('/v1/sessions/' + encodeURIComponent(c.id) + '/events');
    const items = (page.events || []).slice(-50).reverse().map((e) => {
      const li = document.createElement('li');
      li.textContent = new Date(e.received).toLocaleString() + ' ' + e.source + ' ' + e.name + ' (' + e.state + (e.error ? ': ' + e.error : '') + ')';
      return li;
    });
    if (items.length === 0) {
      const li = document.createElement('li');
      li.className = 'muted';
      li.textContent = 'No events.';
      items.push(li);
    }
    $('events').replaceChildren(...items);
  } catch (e) {
    if (e.status !== 401) banner('Events: ' + e.message);
  }
}

// loadCommands lists the session's recent commands and their exit codes
// from the audit log (an exec or PTY's announcement, and the outcome that
// refers to it): the API keeps them nowhere else. Reading the log is
// audit.read, admins' by the default policy; others are told so.
async function loadCommands() {
  const c = current;
  if (!c || !c.since) return;
  const out = $('commands');
  try {
    const q = new URLSearchParams({ session: c.id, since: c.since, n: '1000' });
    const page = await apiJSON('/v1/audit/entries?' + q);
    if (c !== current) return;
    const byIndex = new Map();
    const cmds = [];
    for (const r of page.entries || []) {
      const e = r.entry || {};
      if ((e.action === 'session.exec' || e.action === 'session.pty') && e.decision === 'allow' && e.target && e.target.argv) {
        const cmd = { index: r.index, time: e.time, argv: e.target.argv, pty: e.action === 'session.pty', exit: null, error: '' };
        byIndex.set(r.index, cmd);
        cmds.push(cmd);
      } else if (e.ref != null && e.outcome && byIndex.has(e.ref)) {
        const cmd = byIndex.get(e.ref);
        if (e.outcome.exit_code != null) cmd.exit = e.outcome.exit_code;
        if (e.outcome.error) cmd.error = e.outcome.error;
      }
    }
    const items = cmds.slice(-20).reverse().map((cmd) => {
      const li = document.createElement('li');
      let status = 'running or no outcome';
      if (cmd.exit != null) status = 'exit ' + cmd.exit;
      else if (cmd.error) status = cmd.error;
      li.textContent = when(cmd.time) + ' ' + (cmd.pty ? '(terminal) ' : '') + cmd.argv.join(' ') + ' → ' + status;
      li.dataset.exit = cmd.exit == null ? '' : String(cmd.exit);
      return li;
    });
    if (items.length === 0) {
      const li = document.createElement('li');
      li.className = 'muted';
      li.textContent = 'No commands.';
      items.push(li);
    }
    out.replaceChildren(...items);
  } catch (e) {
    if (e.status === 401) return;
    const li = document.createElement('li');
    li.className = 'muted';
    li.textContent = e.status === 403 ? 'The policy does not let you read the audit log, where commands are kept: ' + e.message : 'Commands: ' + e.message;
    out.replaceChildren(li);
  }
}

// ---- templates, audit, nodes ----
// Each page reads the API with the cookie like the sessions list; what the
// policy refuses (403) is said on the page, in its error line.

function refused(el, e) {
  if (e.status === 401) return;
  if (e.status === 0) { banner(e.message); return; }
  el.textContent = (e.status === 403 ? 'Not allowed: ' : '') + e.message;
  el.hidden = false;
}

function when(t) {
  return t ? new Date(t).toLocaleString() : '';
}

let templateShown = '';

function openTemplates() {
  closeSession();
  show('templates');
  document.title = 'Templates · cove';
  poll(refreshTemplates);
}

async function refreshTemplates() {
  const err = $('t-error');
  try {
    const list = ((await apiJSON('/v1/templates')) || {}).templates || [];
    err.hidden = true;
    banner('');
    const rows = list.map((t) => {
      const tr = document.createElement('tr');
      tr.dataset.name = t.name;
      const nc = document.createElement('td');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'link';
      b.textContent = t.name;
      b.addEventListener('click', () => { templateShown = t.name; refreshVersions(); });
      nc.append(b);
      tr.append(nc);
      const st = cell(t.state + (t.rebuilding ? ' (rebuilding)' : ''));
      st.className = 'state-cell';
      st.dataset.state = t.state;
      tr.append(st, cell(t.version ? 'v' + t.version : ''), cell((t.commit || '').slice(0, 12)),
        cell(t.image), cell(t.pool ? t.pool_ready + ' of ' + t.pool + ' warm' : 'none'), cell(when(t.updated_at)));
      const act = document.createElement('td');
      act.className = 'actions';
      act.append(poolForm(t));
      act.append(actionButton('Rebuild', async () => {
        await api('/v1/templates/' + encodeURIComponent(t.name) + '/rebuild', { method: 'POST' });
        refreshTemplates();
      }));
      tr.append(act);
      return tr;
    });
    replaceRows($('templates').querySelector('tbody'), rows, 'name');
    $('t-empty').hidden = list.length !== 0;
    if (templateShown) refreshVersions(list.find((t) => t.name === templateShown));
  } catch (e) {
    refused(err, e);
  }
}

// poolForm sets a template's warm-pool size (PUT /v1/templates/NAME/pool).
// The refresh every 2 s leaves a size being typed alone: the field keeps
// what the user typed while it has the focus (replaceRows puts the focus
// back; the value is carried over here).
function poolForm(t) {
  const f = document.createElement('form');
  f.className = 'pool-form';
  const id = 'pool-' + t.name;
  const input = document.createElement('input');
  input.id = id;
  input.setAttribute('aria-label', 'Warm pool size of ' + t.name);
  input.type = 'number';
  input.min = '0';
  input.max = '64';
  input.required = true;
  input.className = 'pool-size';
  const prev = document.getElementById(id);
  input.value = prev && document.activeElement === prev ? prev.value : String(t.pool || 0);
  const b = document.createElement('button');
  b.type = 'submit';
  b.textContent = 'Set pool';
  f.append(input, b);
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const err = $('t-error');
    b.disabled = true;
    try {
      await api('/v1/templates/' + encodeURIComponent(t.name) + '/pool', { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ size: Number(input.value) }) });
      err.hidden = true;
    } catch (e) {
      refused(err, e);
    } finally {
      b.disabled = false;
    }
    refreshTemplates();
  });
  return f;
}

async function refreshVersions(tpl) {
  const name = templateShown;
  try {
    const vs = ((await apiJSON('/v1/templates/' + encodeURIComponent(name) + '/versions')) || {}).versions || [];
    $('t-name').textContent = name;
    const rows = vs.map((v) => {
      const tr = document.createElement('tr');
      const st = cell(v.state + (v.current ? ' (current)' : ''));
      st.className = 'state-cell';
      st.dataset.state = v.state;
      tr.append(cell('v' + v.version), st, cell(v.commit || ''), cell(v.reason),
        cell(v.build_ms ? (v.build_ms / 1000).toFixed(1) + ' s' : ''), cell(v.sessions), cell(when(v.created_at)));
      return tr;
    });
    $('versions').querySelector('tbody').replaceChildren(...rows);
    // Each version's build log (its commands' output, a good build's
    // too) and error, newest first.
    const logs = vs.slice().reverse().filter((v) => v.log || v.error).map((v) => {
      let s = '== v' + v.version + ' (' + v.state + ')\n';
      if (v.log) s += v.log;
      if (v.error) s += (v.log ? '\n' : '') + 'error: ' + v.error + '\n';
      return s;
    });
    if (tpl && tpl.error) logs.unshift('error: ' + tpl.error + '\n');
    $('t-log').textContent = logs.length ? logs.join('\n') : 'No build output kept (the versions were made from a checkpoint, or before logs were kept).';
    $('t-detail').hidden = false;
  } catch (e) {
    refused($('t-error'), e);
  }
}

let auditNext = 0;

function openAudit() {
  closeSession();
  stopPolling();
  show('audit');
  document.title = 'Audit · cove';
  loadAudit(true);
}

$('audit-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  loadAudit(true);
});
$('a-more').addEventListener('click', () => loadAudit(false));
$('commands-refresh').addEventListener('click', () => loadCommands());

function actorText(a) {
  if (!a) return '';
  return [a.kind, a.user || a.subject || '', a.session ? 'in ' + a.session : ''].filter(Boolean).join(' ');
}

function targetText(t) {
  if (!t) return '';
  return Object.entries(t).map(([k, v]) => k + ' ' + (Array.isArray(v) ? v.join(',') : v)).join(', ');
}

async function loadAudit(fresh) {
  const err = $('a-error');
  const tbody = $('audit').querySelector('tbody');
  if (fresh) {
    auditNext = 0;
    tbody.replaceChildren();
  }
  const q = new URLSearchParams({ n: '50', from: String(auditNext) });
  const sess = $('audit-session').value.trim();
  const actor = $('audit-actor').value.trim();
  if (sess) q.set('session', sess);
  if (actor) q.set('actor', actor);
  try {
    const [page, cp] = await Promise.all([apiJSON('/v1/audit/entries?' + q), apiJSON('/v1/audit/checkpoint')]);
    err.hidden = true;
    $('a-checkpoint').textContent = 'Latest signed checkpoint: ' + cp.size + ' entries (' + cp.origin + ').';
    const entries = page.entries || [];
    const rows = entries.map((r) => {
      const e = r.entry || {};
      const tr = document.createElement('tr');
      tr.dataset.index = r.index;
      const v = cell('checking…');
      v.className = 'verify';
      tr.append(cell(r.index), cell(when(e.time)), cell(actorText(e.actor)), cell(e.action), cell(targetText(e.target)),
        cell(e.decision || (e.outcome ? 'outcome' : '')), v);
      return { tr, v, index: r.index };
    });
    tbody.append(...rows.map((x) => x.tr));
    $('a-empty').hidden = tbody.children.length !== 0;
    $('a-more').hidden = entries.length < 50;
    auditNext = page.next;
    for (const x of rows) await verifyRow(x);
  } catch (e) {
    refused(err, e);
  }
}

// verifyRow asks the server to check the entry's inclusion proof against
// the signed checkpoint (/dash/audit/verify).
async function verifyRow(x) {
  try {
    const r = await fetch('/dash/audit/verify?index=' + x.index, { credentials: 'same-origin' });
    const j = await r.json();
    if (r.status === 503) x.v.textContent = 'not yet';
    else if (!r.ok) x.v.textContent = j.error ? j.error.message : String(r.status);
    else x.v.textContent = j.verified ? 'verified (size ' + j.checkpoint_size + ')' : 'NOT verified: ' + j.error;
    x.v.dataset.verified = r.ok && j.verified ? 'yes' : 'no';
  } catch (e) {
    x.v.textContent = 'unknown';
  }
}

function openNodes() {
  closeSession();
  show('nodes');
  document.title = 'Nodes · cove';
  poll(refreshNodes);
}

async function refreshNodes() {
  const err = $('n-error');
  try {
    const list = ((await apiJSON('/v1/nodes')) || {}).nodes || [];
    err.hidden = true;
    banner('');
    const rows = list.map((n) => {
      const tr = document.createElement('tr');
      tr.dataset.id = n.id;
      const st = cell(n.state + (n.connected || n.embedded ? '' : ' (not connected)'));
      st.className = 'state-cell';
      st.dataset.state = n.state;
      const c = n.capacity || {};
      tr.append(cell(n.name || n.id), st, cell(c.vcpus), cell(c.memory_mib ? c.memory_mib + ' MiB' : ''),
        cell(bytes(c.disk_bytes)), cell(n.sessions), cell(n.running), cell(n.embedded ? 'embedded' : age(n.heartbeat_at) + ' ago'));
      const act = document.createElement('td');
      act.className = 'actions';
      const post = (verb) => async () => {
        try {
          await api('/v1/nodes/' + encodeURIComponent(n.id) + '/' + verb, { method: 'POST' });
          err.hidden = true;
        } catch (e) { refused(err, e); }
        refreshNodes();
      };
      if (n.state === 'cordoned' || n.state === 'draining') act.append(actionButton('Uncordon', post('uncordon')));
      else act.append(actionButton('Cordon', post('cordon')));
      act.append(actionButton('Drain', async () => {
        if (window.confirm('Drain ' + (n.name || n.id) + '? It takes no new sessions and parks the ones it runs.')) await post('drain')();
      }, 'danger'));
      tr.append(act);
      return tr;
    });
    replaceRows($('nodes').querySelector('tbody'), rows, 'id');
  } catch (e) {
    refused(err, e);
  }
}

start();
