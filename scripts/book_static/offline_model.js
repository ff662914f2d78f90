// A stand-in for an anywidget model when there is no kernel: the course website (make book).
//
// scripts/build_book.py writes, for each simulator the notebook displayed, the widget's stored
// state (the traits the kernel last sent: blocks, table, frozen, switches, palette, vocabulary,
// ...) into the page, plus `offline_note`, and calls the widget's own render({ model, el })
// with an OfflineModel over that state. The widget then works as far as a browser alone can
// take it: toggles, presets and switches redraw locally from the stored per-block table.
// Nothing is ever sent anywhere: send() does nothing, save_changes() only counts.
//
// The interface is the part of anywidget's model that freeze_view.js uses: get, set, on, off,
// save_changes, send. set() fires "change:<key>" (and "change") when the value differs, like
// Backbone does under anywidget; "msg:custom" never fires, since no kernel can answer.

const same = (a, b) => a === b || JSON.stringify(a) === JSON.stringify(b);

export class OfflineModel {
  constructor(state = {}) {
    this._state = { ...state };
    this._listeners = new Map();   // event name -> [{ callback, context }]
    this.saved = 0;                // save_changes() calls (tests read it)
    this.sent = [];                // messages the widget tried to send (kept, never delivered)
  }

  get(key) {
    return this._state[key];
  }

  set(key, value) {
    if (key !== null && typeof key === "object") {
      for (const [k, v] of Object.entries(key)) this.set(k, v);
      return;
    }
    const old = this._state[key];
    this._state[key] = value;
    if (!same(old, value)) {
      this._emit(`change:${key}`, this, value);
      this._emit("change", this);
    }
  }

  on(name, callback, context) {
    for (const event of String(name).split(/\s+/).filter(Boolean)) {
      if (!this._listeners.has(event)) this._listeners.set(event, []);
      this._listeners.get(event).push({ callback, context });
    }
  }

  off(name, callback) {
    if (!name) {
      if (!callback) { this._listeners.clear(); return; }
      for (const event of this._listeners.keys()) this.off(event, callback);
      return;
    }
    for (const event of String(name).split(/\s+/).filter(Boolean)) {
      if (!callback) { this._listeners.delete(event); continue; }
      const kept = (this._listeners.get(event) || []).filter((l) => l.callback !== callback);
      this._listeners.set(event, kept);
    }
  }

  save_changes() {
    this.saved += 1;   // nothing to synchronise: there is no kernel
  }

  send(message) {
    this.sent.push(message);   // offline: the widget never reaches a kernel
  }

  _emit(event, ...args) {
    for (const { callback, context } of [...(this._listeners.get(event) || [])]) {
      try { callback.apply(context, args); } catch (error) { console.error(error); }
    }
  }
}

/** The state the build wrote into the page as JSON, in the element with this id. */
export function readState(id) {
  const holder = document.getElementById(id);
  return holder ? JSON.parse(holder.textContent) : {};
}

/** Render an anywidget module (its default export: { render, initialize? } or a function that
 *  returns one) into `el` over an OfflineModel of `state`; returns the model. */
export async function mount(widgetModule, el, state) {
  const model = new OfflineModel(state);
  const exported = widgetModule && widgetModule.default !== undefined ? widgetModule.default : widgetModule;
  const widget = typeof exported === "function" ? await exported() : exported;
  if (widget.initialize) await widget.initialize({ model });
  await widget.render({ model, el });
  el.dataset.offlineModel = "ready";
  el.__offlineModel = model;
  return model;
}
