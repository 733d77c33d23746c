import Hummingbird
import NIOCore

/// The playground: one page at `/` (HTML, CSS and JS compiled into the binary, nothing
/// fetched from elsewhere) that runs one prompt through the base model and any adapters
/// side by side, over the same OpenAI routes a client uses.
enum Playground {
    static func register<C: RequestContext>(on router: Router<C>) {
        router.get("/") { _, _ in page(html, "text/html; charset=utf-8") }
        router.get("/playground.css") { _, _ in page(css, "text/css; charset=utf-8") }
        router.get("/playground.js") { _, _ in page(js, "text/javascript; charset=utf-8") }
    }

    static func page(_ text: String, _ type: String) -> Response {
        Response(status: .ok, headers: [.contentType: type, .cacheControl: "no-cache"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static let html = #"""
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Facet playground</title>
    <link rel="stylesheet" href="/playground.css">
    </head>
    <body>
    <header>
      <h1>Facet playground</h1>
      <div id="status" aria-live="polite">…</div>
    </header>
    <div id="error" role="alert" hidden></div>
    <div id="keybox" hidden>
      <label>API key <input id="apikey" type="password" autocomplete="off"></label>
      <button id="keysave">Use key</button>
      <span class="hint">kept for this browser tab only</span>
    </div>
    <main>
      <section id="compose">
        <fieldset id="models"><legend>Models</legend><div id="modellist">loading…</div></fieldset>
        <textarea id="prompt" rows="3" placeholder="Type a prompt. Enter runs it, Shift+Enter adds a line, Esc stops."></textarea>
        <div id="settings">
          <label>Mode <select id="mode"><option value="chat">chat</option><option value="raw">raw completion</option></select></label>
          <label>Temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.7"></label>
          <label>top_p <input id="top_p" type="number" min="0" max="1" step="0.05" value="1"></label>
          <label>top_k <input id="top_k" type="number" min="0" step="1" value="0"></label>
          <label>Max tokens <input id="max_tokens" type="number" min="1" step="1" value="64"></label>
          <label>Seed <input id="seed" type="number" min="0" step="1" value="1"></label>
          <label class="check"><input id="same-seed" type="checkbox" checked> same seed in every column</label>
          <button id="run" title="Enter">Run</button>
          <button id="stop" title="Esc">Stop</button>
        </div>
      </section>
      <section id="columns" aria-live="polite"></section>
      <section id="adapters">
        <h2>Adapters</h2>
        <table><thead><tr><th>name</th><th>state</th><th>rank</th><th>targets</th><th>size</th><th>requests</th><th></th></tr></thead>
        <tbody id="adapterrows"></tbody></table>
        <form id="loadform">
          <input id="load-name" placeholder="name" required>
          <input id="load-path" placeholder="path under --adapter-root" required>
          <button id="load-btn" type="submit">Load</button>
        </form>
      </section>
    </main>
    <script src="/playground.js"></script>
    </body>
    </html>
    """#

    static let css = #"""
    :root { --bg: #fff; --fg: #1b1d21; --muted: #5f6670; --panel: #f3f4f6; --line: #d6d9de; --accent: #2f6fde; --bad: #b3261e; }
    @media (prefers-color-scheme: dark) {
      :root { --bg: #15171a; --fg: #e6e8eb; --muted: #9aa2ad; --panel: #1f2226; --line: #343941; --accent: #7aa7ff; --bad: #ff8a80; }
    }
    * { box-sizing: border-box; }
    body { margin: 0; font: 15px/1.45 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
    header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: .5rem; padding: .6rem 1rem; border-bottom: 1px solid var(--line); }
    h1 { font-size: 1.15rem; margin: 0; }
    h2 { font-size: 1rem; margin: .2rem 0 .5rem; }
    #status { color: var(--muted); font-variant-numeric: tabular-nums; }
    main { padding: .8rem 1rem; display: grid; gap: 1rem; }
    fieldset { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 .6rem; }
    #modellist label { margin-right: 1rem; white-space: nowrap; }
    textarea, input, select, button { font: inherit; color: inherit; background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: .35rem .5rem; }
    textarea { width: 100%; resize: vertical; }
    #settings { display: flex; flex-wrap: wrap; gap: .5rem .9rem; align-items: center; margin-top: .5rem; }
    #settings input[type=number] { width: 5.5rem; }
    button { cursor: pointer; }
    button#run { background: var(--accent); color: var(--bg); border-color: var(--accent); font-weight: 600; }
    button:focus-visible, input:focus-visible, textarea:focus-visible, select:focus-visible { outline: 2px solid var(--accent); outline-offset: 1px; }
    #columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(16rem, 1fr)); gap: .8rem; }
    .column { border: 1px solid var(--line); border-radius: 8px; background: var(--panel); padding: .6rem .7rem; min-height: 6rem; }
    .column h3 { margin: 0 0 .3rem; font-size: .95rem; }
    .column .output { white-space: pre-wrap; overflow-wrap: anywhere; }
    .column .stats { color: var(--muted); font-size: .82rem; margin-top: .4rem; font-variant-numeric: tabular-nums; }
    .column[data-state=error] .output { color: var(--bad); }
    #error { margin: .6rem 1rem 0; padding: .5rem .7rem; border: 1px solid var(--bad); color: var(--bad); border-radius: 6px; }
    #keybox { margin: .6rem 1rem 0; }
    .hint { color: var(--muted); font-size: .85rem; }
    table { border-collapse: collapse; width: 100%; font-size: .9rem; }
    th, td { text-align: left; padding: .25rem .4rem; border-bottom: 1px solid var(--line); vertical-align: top; }
    #loadform { display: flex; flex-wrap: wrap; gap: .5rem; margin-top: .6rem; }
    #loadform input { flex: 1 1 12rem; }
    @media (max-width: 600px) { main { padding: .5rem; } #settings input[type=number] { width: 4.5rem; } th:nth-child(4), td:nth-child(4) { display: none; } }
    """#

    static let js = #"""
    'use strict';
    const $ = s => document.querySelector(s);
    let apiKey = sessionStorage.getItem('facet-api-key') || '';
    let baseModel = null;
    let controllers = [];

    function showError(message) {
      const e = $('#error');
      e.textContent = message;
      e.hidden = !message;
    }

    async function api(path, body) {
      const headers = {};
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      if (apiKey) headers['Authorization'] = 'Bearer ' + apiKey;
      const options = { method: body === undefined ? 'GET' : 'POST', headers };
      if (body !== undefined) options.body = JSON.stringify(body);
      return fetch(path, options).then(checked);
    }

    async function checked(r) {
      if (r.status === 401) { $('#keybox').hidden = false; throw new Error('This server needs an API key: enter it above.'); }
      if (!r.ok) {
        let message = r.status + ' ' + r.statusText;
        try { const j = await r.json(); message = (j.error && (j.error.message || j.error)) || message; } catch (_) {}
        throw new Error(message);
      }
      return r;
    }

    async function loadModels() {
      const r = await api('/v1/models');
      const data = (await r.json()).data;
      baseModel = data[0].id;
      const list = $('#modellist');
      const checked = new Set([...list.querySelectorAll('input.model:checked')].map(i => i.value));
      list.textContent = '';
      data.forEach((m, i) => {
        const label = document.createElement('label');
        const box = document.createElement('input');
        box.type = 'checkbox'; box.className = 'model'; box.value = m.id;
        box.checked = checked.size ? checked.has(m.id) : i === 0;
        label.append(box, ' ', i === 0 ? m.id + ' (base)' : m.id);
        list.append(label);
      });
    }

    async function loadAdapters() {
      const r = await api('/v1/facet/adapters');
      const rows = $('#adapterrows');
      rows.textContent = '';
      for (const a of (await r.json()).data) {
        const tr = document.createElement('tr');
        const state = a.registered === false ? 'on disk' : a.resident ? (a.in_use ? 'in use' : 'resident') : 'evicted';
        const cells = [a.name, state, a.rank ?? '', (a.targets || []).join(', '), a.bytes ? (a.bytes / 1048576).toFixed(1) + ' MB' : '', a.requests];
        for (const c of cells) { const td = document.createElement('td'); td.textContent = c; tr.append(td); }
        const td = document.createElement('td');
        if (a.registered !== false) {
          const b = document.createElement('button');
          b.textContent = 'Unload'; b.className = 'unload'; b.dataset.name = a.name;
          b.onclick = () => unload(a.name);
          td.append(b);
        }
        tr.append(td);
        rows.append(tr);
      }
    }

    async function refresh() {
      try { await loadModels(); await loadAdapters(); showError(''); } catch (e) { showError(e.message); }
    }

    async function unload(name) {
      try { await api('/v1/unload_lora_adapter', { lora_name: name }); await refresh(); } catch (e) { showError(e.message); }
    }

    $('#loadform').addEventListener('submit', async ev => {
      ev.preventDefault();
      try {
        await api('/v1/load_lora_adapter', { lora_name: $('#load-name').value.trim(), lora_path: $('#load-path').value.trim() });
        $('#load-name').value = ''; $('#load-path').value = '';
        await refresh();
      } catch (e) { showError(e.message); }
    });

    function number(id, integer) {
      const v = integer ? parseInt($(id).value, 10) : parseFloat($(id).value);
      return Number.isFinite(v) ? v : undefined;
    }

    function column(model) {
      const div = document.createElement('div');
      div.className = 'column'; div.dataset.model = model; div.dataset.state = 'running';
      const h = document.createElement('h3'); h.textContent = model === baseModel ? model + ' (base)' : model;
      const out = document.createElement('div'); out.className = 'output';
      const stats = document.createElement('div'); stats.className = 'stats'; stats.textContent = 'waiting…';
      div.append(h, out, stats);
      return div;
    }

    async function runOne(model, index, div, signal) {
      const chat = $('#mode').value === 'chat';
      const prompt = $('#prompt').value;
      const seed = number('#seed', true);
      const body = { model, stream: true, stream_options: { include_usage: true },
                     max_tokens: number('#max_tokens', true), temperature: number('#temperature'), top_p: number('#top_p'),
                     top_k: number('#top_k', true) };
      if (seed !== undefined) body.seed = $('#same-seed').checked ? seed : seed + index;
      if (chat) body.messages = [{ role: 'user', content: prompt }]; else body.prompt = prompt;
      const out = div.querySelector('.output'), stats = div.querySelector('.stats');
      const start = performance.now();
      let first = null, tokens = 0, chunks = 0;
      const show = () => {
        const now = performance.now();
        const n = tokens || chunks;
        const rate = first && n > 1 ? ((n - 1) / ((now - first) / 1000)).toFixed(1) : '–';
        stats.textContent = `TTFT ${first ? Math.round(first - start) + ' ms' : '–'} · ${n} tokens · ${rate} tok/s`;
      };
      try {
        const headers = { 'Content-Type': 'application/json' };
        if (apiKey) headers['Authorization'] = 'Bearer ' + apiKey;
        const r = await fetch(chat ? '/v1/chat/completions' : '/v1/completions', { method: 'POST', headers, body: JSON.stringify(body), signal }).then(checked);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            for (const line of event.split('\n')) {
              if (!line.startsWith('data: ')) continue;
              const payload = line.slice(6);
              if (payload === '[DONE]') continue;
              const j = JSON.parse(payload);
              if (j.error) throw new Error(j.error.message || j.error);
              if (j.usage) tokens = j.usage.completion_tokens;
              const c = j.choices && j.choices[0];
              const text = c ? (chat ? (c.delta && c.delta.content) : c.text) : '';
              if (text) { if (!first) first = performance.now(); chunks += 1; out.textContent += text; }
            }
          }
          show();
        }
        show();
        div.dataset.state = 'done';
      } catch (e) {
        if (e.name === 'AbortError') { div.dataset.state = 'stopped'; stats.textContent += ' · stopped'; }
        else { div.dataset.state = 'error'; out.textContent = e.message; }
      }
    }

    async function run() {
      stop();
      showError('');
      const models = [...document.querySelectorAll('input.model:checked')].map(i => i.value);
      if (!models.length) { showError('Choose at least one model.'); return; }
      if (!$('#prompt').value.trim()) { showError('Type a prompt first.'); return; }
      const columns = $('#columns');
      columns.textContent = '';
      controllers = models.map(() => new AbortController());
      await Promise.all(models.map((m, i) => {
        const div = column(m);
        columns.append(div);
        return runOne(m, i, div, controllers[i].signal);
      }));
      loadAdapters().catch(() => {});
    }

    function stop() {
      controllers.forEach(c => c.abort());
      controllers = [];
    }

    async function poll() {
      try {
        const s = await (await api('/v1/facet/status')).json();
        $('#status').textContent = `running ${s.running} · waiting ${s.waiting} · KV blocks ${s.kv_blocks_used}/${s.kv_blocks_total} · ${s.tokens_per_second.toFixed(1)} tok/s`;
      } catch (_) { $('#status').textContent = 'server unreachable'; }
    }

    $('#run').onclick = run;
    $('#stop').onclick = stop;
    $('#prompt').addEventListener('keydown', ev => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); run(); }
    });
    document.addEventListener('keydown', ev => { if (ev.key === 'Escape') stop(); });
    $('#keysave').onclick = () => {
      apiKey = $('#apikey').value;
      sessionStorage.setItem('facet-api-key', apiKey);
      $('#keybox').hidden = true;
      refresh();
    };
    refresh();
    poll();
    setInterval(poll, 1000);
    """#
}
