// The todo page: TodoMVC's markup and behaviour over the public API, live
// from the change feed (GET /todos/changes). Signed out: the public list.
// Signed in: the user's own todos (mine=true), private ones included.
//
// - Every todo text goes in as text (textContent, input.value), never as
//   markup.
// - The token lives in sessionStorage, never in a URL; the feed is read
//   with fetch so that it can carry the Authorization header.
// - Ids are 64-bit: they are read from the JSON as strings, never as
//   numbers (which would round them).
// - A write answers 202 before it is applied: the page shows it at once,
//   and the feed (or /commands/{id}, when it is rejected) settles it.
'use strict';

(() => {
  const $ = (selector) => document.querySelector(selector);
  const TOKEN = 'todo.token';
  const USER = 'todo.user';

  const state = {
    token: sessionStorage.getItem(TOKEN),
    user: sessionStorage.getItem(USER),
    todos: new Map(),
    categories: [],
    feed: null,
  };

  // --- the API -------------------------------------------------------------

  // Ids as strings: a JSON number above 2^53 would lose its last digits.
  const idsAsStrings = (text) =>
    text.replace(/"(id|todo_id|command_id|category_id)":(\d+)/g, '"$1":"$2"');

  async function api(method, path, body) {
    const headers = {};
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    // An object is sent as JSON; a string is JSON text already.
    const sent = body === undefined || typeof body === 'string' ? body : JSON.stringify(body);
    const r = await fetch(path, { method, headers, body: sent, cache: 'no-store' });
    const text = await r.text();
    let json = null;
    try {
      json = text ? JSON.parse(idsAsStrings(text)) : null;
    } catch (_) {
      json = null;
    }
    return { status: r.status, headers: r.headers, json };
  }

  function problemOf(r) {
    const retry = r.headers.get('Retry-After');
    if (r.status === 429) return `Too many attempts: try again in ${retry || 'a few'} seconds.`;
    if (r.status === 503) return `The service is busy: try again in ${retry || 'a few'} seconds.`;
    return (r.json && r.json.error && r.json.error.message) || `The server answered ${r.status}.`;
  }

  function say(text) {
    $('.status').textContent = text;
  }

  function problem(text) {
    const p = $('.problem');
    p.textContent = text || '';
    p.hidden = !text;
  }

  // --- reading: a list, then its changes -----------------------------------

  const byNewest = (a, b) => (BigInt(b.id) > BigInt(a.id) ? 1 : -1);

  // Every page of `path` (following Link: rel="next"); the version of the
  // first page (its ETag), from which the feed is followed.
  async function load(path) {
    const todos = [];
    let version = null;
    let next = path;
    while (next) {
      const r = await api('GET', next);
      if (r.status !== 200) throw new Error(problemOf(r));
      if (version === null) {
        const tag = r.headers.get('ETag') || '';
        version = (tag.match(/\d+/) || [null])[0];
      }
      todos.push(...r.json);
      const link = r.headers.get('Link') || '';
      const m = link.match(/<([^>]+)>;\s*rel="next"/);
      next = signedIn() && m ? m[1] : null;
    }
    return { todos, version };
  }

  function parseEvent(block) {
    const ev = { data: '' };
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const at = line.indexOf(':');
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? '' : line.slice(at + 1).replace(/^ /, '');
      if (field === 'id') ev.id = value;
      else if (field === 'event') ev.event = value;
      else if (field === 'data') ev.data += value;
      else if (field === 'retry') ev.retry = Number(value);
    }
    return ev;
  }

  // Follow `path` (a /todos/changes address) until `stop` aborts: each
  // event to `onEvent`; when the stream ends, resume with Last-Event-ID
  // after the server's `retry:`.
  async function follow(path, stop, onEvent) {
    let last = null;
    let wait = 1000;
    while (!stop.signal.aborted) {
      try {
        const headers = { Accept: 'text/event-stream' };
        if (state.token) headers.Authorization = `Bearer ${state.token}`;
        if (last) headers['Last-Event-ID'] = last;
        const r = await fetch(path, { headers, signal: stop.signal, cache: 'no-store' });
        if (r.status !== 200) throw new Error(`feed: ${r.status}`);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buffered = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffered += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffered.indexOf('\n\n')) >= 0) {
            const ev = parseEvent(buffered.slice(0, end));
            buffered = buffered.slice(end + 2);
            if (ev.retry > 0) wait = ev.retry;
            if (ev.id !== undefined) last = ev.id;
            if (ev.event) await onEvent(ev);
          }
        }
      } catch (_) {
        if (stop.signal.aborted) return;
      }
      await new Promise((done) => setTimeout(done, wait));
    }
  }

  async function show() {
    if (state.feed) state.feed.abort();
    const stop = new AbortController();
    state.feed = stop;
    const path = signedIn() ? '/todos?mine=true&limit=1000' : '/todos?limit=50';
    try {
      const { todos, version } = await load(path);
      if (stop.signal.aborted) return;
      state.todos = new Map(todos.map((t) => [t.id, t]));
      render();
      say(signedIn() ? 'Your todos, live.' : 'The public list, live.');
      const mine = signedIn() ? 'mine=true&' : '';
      const since = version ? `since=${version}` : '';
      follow(`/todos/changes?${mine}${since}`, stop, async (ev) => {
        if (ev.event === 'reset') {
          // The server's history does not reach back far enough: reload.
          if (!stop.signal.aborted) show();
          stop.abort();
          return;
        }
        const change = JSON.parse(idsAsStrings(ev.data));
        if (change.op === 'deleted') state.todos.delete(change.todo.id);
        else state.todos.set(change.todo.id, change.todo);
        render();
      });
    } catch (e) {
      problem(e.message);
    }
  }

  // --- writing -------------------------------------------------------------

  // Send a write; once it is accepted, find out whether it was applied.
  // A rejected one is said, and the list reloaded.
  async function write(method, path, body) {
    problem('');
    const r = await api(method, path, body);
    if (r.status !== 202) {
      problem(problemOf(r));
      show();
      return null;
    }
    settle(r.json.command_id);
    return r.json.todo_id;
  }

  async function settle(command) {
    let pause = 50;
    for (let spent = 0; spent < 30000; spent += pause, pause = Math.min(pause * 2, 1000)) {
      const r = await api('GET', `/commands/${command}`);
      if (r.status === 200 && r.json.status === 'applied') return;
      if (r.status === 200 && r.json.status === 'rejected') {
        problem(`That change was not made: ${r.json.reason.replace(/_/g, ' ')}.`);
        show();
        return;
      }
      await new Promise((done) => setTimeout(done, pause));
    }
  }

  function change(todo, fields) {
    state.todos.set(todo.id, { ...todo, ...fields });
    render();
    write('PUT', `/todos/${todo.id}`, fields);
  }

  function remove(todo) {
    state.todos.delete(todo.id);
    render();
    write('DELETE', `/todos/${todo.id}`);
  }

  async function add(title) {
    const category = $('.category').value;
    // The body as text: a category id is 64-bit, written with its digits as
    // the server gave them, not through a JavaScript number.
    const fields = [`"title":${JSON.stringify(title)}`, '"public":false'];
    if (category) fields.push(`"category_id":${category}`);
    problem('');
    const r = await api('POST', '/todos', `{${fields.join(',')}}`);
    if (r.status !== 202) {
      problem(problemOf(r));
      return;
    }
    const id = r.json.todo_id;
    if (!state.todos.has(id)) {
      const now = new Date().toISOString();
      state.todos.set(id, {
        id,
        title,
        description: '',
        completed: false,
        owner: state.user,
        created_at: now,
        updated_at: now,
        category_id: category || null,
        public: false,
        pending: true,
      });
      render();
    }
    settle(r.json.command_id);
  }

  // --- the page ------------------------------------------------------------

  const signedIn = () => Boolean(state.token);

  function filter() {
    const hash = location.hash.replace(/^#\/?/, '');
    return hash === 'active' || hash === 'completed' ? hash : 'all';
  }

  function visible() {
    const category = $('.category').value;
    const which = filter();
    return [...state.todos.values()]
      .filter((t) => !signedIn() || !category || t.category_id === category)
      .filter((t) => !signedIn() || which === 'all' || (which === 'completed') === t.completed)
      .sort(byNewest);
  }

  function element(tag, props, ...children) {
    const e = document.createElement(tag);
    Object.assign(e, props);
    e.append(...children);
    return e;
  }

  function item(todo) {
    const li = element('li', { className: todo.completed ? 'completed' : '' });
    li.dataset.id = todo.id;
    if (todo.pending) li.classList.add('pending');
    const label = element('label', { textContent: todo.title });
    const view = element('div', { className: 'view' });
    if (!signedIn()) {
      view.append(label, element('span', { className: 'owner', textContent: `by ${todo.owner}` }));
      li.append(view);
      return li;
    }
    const toggle = element('input', { className: 'toggle', type: 'checkbox', checked: todo.completed });
    toggle.setAttribute('aria-label', `Done: ${todo.title}`);
    toggle.addEventListener('change', () => change(todo, { completed: toggle.checked }));
    label.tabIndex = 0;
    label.title = 'Double-click or press Enter to edit';
    // Each button's name is its visible words and, for a screen reader,
    // the todo it acts on.
    const about = () => element('span', { className: 'visually-hidden', textContent: `: ${todo.title}` });
    const publish = element(
      'button',
      { type: 'button', className: 'visibility', title: todo.public ? 'Anyone can see it' : 'Only you can see it' },
      todo.public ? 'Make private' : 'Make public',
      about(),
    );
    publish.addEventListener('click', () => change(todo, { public: !todo.public }));
    const destroy = element('button', { type: 'button', className: 'destroy' }, 'Delete', about());
    destroy.addEventListener('click', () => remove(todo));
    const edit = element('input', { className: 'edit', value: todo.title, maxLength: 200 });
    edit.setAttribute('aria-label', `Edit: ${todo.title}`);
    const startEditing = () => {
      li.classList.add('editing');
      edit.value = todo.title;
      edit.focus();
    };
    let done = false;
    const finish = (save) => {
      if (done) return;
      done = true;
      li.classList.remove('editing');
      const title = edit.value.trim();
      if (!save || title === todo.title) return render();
      if (title) change(todo, { title });
      else remove(todo);
    };
    label.addEventListener('dblclick', startEditing);
    label.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') startEditing();
    });
    edit.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') finish(true);
      if (e.key === 'Escape') finish(false);
    });
    edit.addEventListener('blur', () => finish(true));
    view.append(toggle, label, publish, destroy);
    li.append(view, edit);
    return li;
  }

  function render() {
    // An item being edited keeps its input until it is done.
    if (document.querySelector('.todo-list li.editing')) return;
    const mine = signedIn();
    $('.sign-in').hidden = mine;
    $('.signed-in').hidden = !mine;
    $('.who').textContent = mine ? `Signed in as ${state.user}` : '';
    $('.new-todo').hidden = !mine;
    $('.toggle-all').hidden = !mine || state.todos.size === 0;
    $('.toggle-all-label').hidden = $('.toggle-all').hidden;
    $('.footer').hidden = !mine;
    $('.list-title').textContent = mine ? '' : 'Public todos';
    $('.todo-list').replaceChildren(...visible().map(item));
    const all = [...state.todos.values()];
    const left = all.filter((t) => !t.completed).length;
    $('.toggle-all').checked = all.length > 0 && left === 0;
    $('.todo-count').replaceChildren(
      element('strong', { textContent: String(left) }),
      ` ${left === 1 ? 'item' : 'items'} left`,
    );
    $('.clear-completed').hidden = all.length === left;
    for (const a of document.querySelectorAll('.filters a')) {
      const selected = a.getAttribute('href') === `#/${filter() === 'all' ? '' : filter()}`;
      a.classList.toggle('selected', selected);
      if (selected) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  async function loadCategories() {
    const select = $('.category');
    select.replaceChildren(element('option', { value: '', textContent: 'All categories' }));
    if (!signedIn()) return;
    const r = await api('GET', '/categories');
    if (r.status !== 200) return;
    for (const c of r.json) select.append(element('option', { value: c.id, textContent: c.name }));
  }

  async function signIn(username, password, register) {
    problem('');
    if (register) {
      const r = await api('POST', '/users', { username, password });
      if (r.status === 409) return problem('That username is taken: choose another, or sign in.');
      if (r.status !== 201) return problem(problemOf(r));
    }
    const r = await api('POST', '/sessions', { username, password });
    if (r.status === 401) return problem('Wrong username or password.');
    if (r.status !== 200) return problem(problemOf(r));
    state.token = r.json.access_token;
    state.user = username;
    sessionStorage.setItem(TOKEN, state.token);
    sessionStorage.setItem(USER, username);
    $('#password').value = '';
    await loadCategories();
    await show();
    $('.new-todo').focus();
  }

  function signOut() {
    state.token = null;
    state.user = null;
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(USER);
    problem('');
    loadCategories();
    show();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('.sign-in').addEventListener('submit', (e) => {
      e.preventDefault();
      const register = e.submitter && e.submitter.value === 'sign-up';
      signIn($('#username').value.trim(), $('#password').value, register);
    });
    $('.sign-out').addEventListener('click', signOut);
    $('.new-todo').addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      const title = e.target.value.trim();
      if (!title) return;
      e.target.value = '';
      add(title);
    });
    $('.toggle-all').addEventListener('change', (e) => {
      // Read once: each change renders, and the box follows the list.
      const completed = e.target.checked;
      for (const t of [...state.todos.values()]) {
        if (t.completed !== completed) change(t, { completed });
      }
    });
    $('.clear-completed').addEventListener('click', () => {
      for (const t of [...state.todos.values()]) if (t.completed) remove(t);
    });
    $('.category').addEventListener('change', render);
    window.addEventListener('hashchange', render);
    loadCategories();
    show();
  });
})();
