// The freeze-toggle simulator's face: an anywidget ES module (no dependencies, no network).
//
// The kernel (tlhelpers.simulator.view.FreezeView over FreezeSim) sends the blocks, a table of
// per-block measurements and, after each real training step, a report. Everything a toggle
// changes is computed here, from that table, with the same two rules as the Python side
// (tlhelpers/simulator/costs.py: backward_path and CostTable.cost): so a toggle redraws at once
// and only tells the kernel afterwards. Steps, training, A/B runs, the gradient ranking and
// architecture changes run in the kernel.
//
// The pure functions are exported so tests can run them in node against the Python side.
//
// The widget is one panel per part of the page (statusPanel, presetPanel, diagramPanel, costPanel,
// controlsPanel, switchPanel, reportPanel, abPanel, scenarioPanel), each a factory over a shared
// context (widgetContext: the model, the view's state, and the only ways to start a timer, an
// animation frame or a listener); `interactions` holds what clicks do, `listenToModel` what the
// kernel's changes redraw, and `render` wires them and returns a cleanup that ends them all.
//
// Offline mode (a static page, no kernel): when the model's `offline_note` is a non-empty string,
// every control that asks the kernel for something is disabled (class fv-needs-kernel) and the
// note is shown (.fv-offline-note); toggles, presets and switches still redraw here and are never
// saved for a kernel. A `#scenario=<encodeURIComponent(scenario)>` in the page address is applied
// before the first draw, and Copy gives such a link.

const SVG_NS = "http://www.w3.org/2000/svg";
/** The words and switches, sent by the kernel (tlhelpers/simulator/vocabulary.py, their one
 *  definition) before anything is drawn; `useVocabulary` installs them. */
export const vocabulary = { stateWords: {}, trainingStates: [], switches: [] };
export function useVocabulary(words) {
  if (!words || !words.stateWords) throw new Error("the kernel sent no vocabulary (FreezeView.vocabulary)");
  Object.assign(vocabulary, words);
}
const isTraining = (state) => vocabulary.trainingStates.includes(state);
const stateWord = (state) => vocabulary.stateWords[state];

// --------------------------------------------------------------------------- pure rules

/** Each block's state: "t" trainable, "f" frozen, "d" frozen with BatchNorm in train mode,
 *  "a" frozen but its normalisation scale and shift train (FreezeSim.block_state). */
export function blockStates(blocks, frozen, switches) {
  const isFrozen = new Set(frozen);
  const states = {};
  for (const b of blocks) {
    if (!isFrozen.has(b.name)) states[b.name] = "t";
    else if (switches.train_norm_affine && b.normParams > 0) states[b.name] = "a";
    else if (switches.bn_train_when_frozen && b.hasBatchNorm) states[b.name] = "d";
    else states[b.name] = "f";
  }
  return states;
}

/** {flow, stopAt, passThrough}: costs.backward_path. flow runs from the loss to the input. */
export function backwardPath(order, parameterBlocks, states) {
  const params = new Set(parameterBlocks);
  const onPath = [];
  let seenTraining = false;
  for (const name of order) {
    const training = isTraining(states[name]);
    if (training || (seenTraining && !params.has(name))) onPath.push(name);
    seenTraining = seenTraining || training;
  }
  const earliest = onPath.length ? order.indexOf(onPath[0]) : -1;
  return {
    flow: onPath.slice().reverse(),
    stopAt: earliest > 0 ? order[earliest - 1] : null,
    passThrough: onPath.filter((n) => !isTraining(states[n])),
  };
}

/** The case key of every segment: CostTable.keys. */
export function caseKeys(table, states) {
  const keys = [];
  let seenTraining = false;
  for (const segment of table.segments) {
    const segmentStates = segment.blocks.map((b) => states[b]);
    keys.push((seenTraining ? "1" : "0") + segmentStates.join(""));
    seenTraining = seenTraining || segmentStates.some(isTraining);
  }
  return keys;
}

function isIdle(key) {
  return key[0] === "0" && ![...key.slice(1)].some(isTraining);
}

/** Backward FLOPs and saved activation bytes of a configuration: CostTable.cost.
 *  `missing` is true when a case has not been measured yet (the kernel is measuring it). */
export function configurationCost(table, states) {
  let backwardFlops = 0;
  let saved = 0;
  let previous = null;
  let missing = false;
  const perSegment = [];
  caseKeys(table, states).forEach((key, index) => {
    const segment = table.segments[index];
    let entry = null;
    if (!isIdle(key)) {
      entry = segment.cases[key] || null;
      if (!entry) missing = true;
    }
    let bytes = entry ? entry[1] : 0;
    (segment.inputBytes || []).forEach((size, j) => {
      if ((entry && entry[2][j]) || (previous && previous[3][j])) bytes += size;
    });
    const flops = entry ? entry[0] : 0;
    backwardFlops += flops;
    saved += bytes;
    perSegment.push({ block: segment.blocks[0] || null, flops, bytes });
    previous = entry;
  });
  return { backwardFlops, saved, perSegment, missing };
}

/** Trainable parameters and the memory training needs beyond the model: saved activations,
 *  gradients (one per trainable parameter) and optimizer state (`slots` per trainable one). */
export function trainingMemory(blocks, states, saved, slots) {
  let trainable = 0;
  let gradientBytes = 0;
  for (const b of blocks) {
    if (states[b.name] === "t") { trainable += b.params; gradientBytes += b.bytes; }
    else if (states[b.name] === "a") { trainable += b.normParams; gradientBytes += b.normBytes; }
  }
  const optimizer = slots * gradientBytes;
  return { trainable, activations: saved, gradients: gradientBytes, optimizer,
           total: saved + gradientBytes + optimizer };
}

/** describe_flow (report.py), word for word. */
export function flowSentence(flow, stopAt, arrow = "->") {
  if (!flow.length) return "no block is trainable, so no gradient is computed: backward has nothing to do";
  const path = flow.join(` ${arrow} `);
  if (stopAt === null || stopAt === undefined) return `gradients flow through ${path}, all the way to the input`;
  return `gradients flow through ${path} and stop at ${stopAt}`;
}

export function capitalise(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

/** figure.human: 1234567 -> "1.23 M". */
export function human(value, unit = "") {
  for (const [factor, prefix] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (Math.abs(value) >= factor) {
      const scaled = value / factor;
      const text = scaled < 100 ? String(Number(scaled.toPrecision(3))) : String(Math.round(scaled));
      return `${text} ${prefix}${unit}`;
    }
  }
  return `${Math.round(value)} ${unit}`.trim();
}

/** figure.share_text: never "100%" unless all, never "0%" unless none. */
export function shareText(value, reference) {
  if (!reference) return "n/a";
  const share = value / reference;
  if (share >= 0.995 && share < 1) return ">99%";
  if (share > 0 && share < 0.0005) return "<0.1%";
  const tenths = Math.floor(share * 1000 + 0.5);   // one decimal below 10% (figure.share_text, the same rule)
  if (tenths > 0 && tenths < 100) return `${(tenths / 10).toFixed(1)}%`;
  return `${Math.floor(share * 100 + 0.5)}%`;
}

function encodeName(name) {
  return name.replace(/[^A-Za-z0-9_.\-~]/g, (c) =>
    Array.from(new TextEncoder().encode(c), (b) => "%" + b.toString(16).toUpperCase().padStart(2, "0")).join(""));
}

/** The scenario string (scenario.encode) with this frozen set and these switches. */
export function scenarioWith(base, order, frozen, switches) {
  const isFrozen = new Set(frozen);
  const on = vocabulary.switches.filter((sw) => switches[sw.key]).map((sw) => sw.short);
  const fields = base.split("&").map((field) => {
    if (field.startsWith("frozen=")) return "frozen=" + order.filter((b) => isFrozen.has(b)).map(encodeName).join(",");
    if (field.startsWith("switches=")) return "switches=" + on.join(",");
    return field;
  });
  return fields.join("&");
}

/** The presets: which blocks stay frozen and which switches change. */
export function preset(kind, order, head, k = 3) {
  const allBut = (keep) => order.filter((b) => !keep.includes(b));
  const beforeHead = order.filter((b) => b !== head);
  switch (kind) {
    case "probe": return { frozen: allBut([head]), switches: { train_norm_affine: false } };
    case "last": return { frozen: allBut([head, beforeHead[beforeHead.length - 1]]), switches: { train_norm_affine: false } };
    case "lastk": return { frozen: order.slice(0, Math.max(0, order.length - k)), switches: { train_norm_affine: false } };
    case "affine": return { frozen: allBut([head]), switches: { train_norm_affine: true } };
    case "first": return { frozen: order.slice(1), switches: { train_norm_affine: false } };
    case "all": return { frozen: [], switches: { train_norm_affine: false } };
    default: throw new Error(`unknown preset ${kind}`);
  }
}

// --------------------------------------------------------------------------- scenario strings, read back

/** The keys a scenario string may hold (scenario.KEYS). */
export const SCENARIO_KEYS = ["arch", "frozen", "seed", "opt", "switches"];
const SCENARIO_EXAMPLE = "arch=mobilenet_v2&frozen=stem,stage1&seed=0&opt=sgd,0.01,0.9&switches=";

/** The text is not a scenario string (scenario.ScenarioError). */
export class ScenarioError extends Error {
  constructor(message) { super(message); this.name = "ScenarioError"; }
}

/** Python's repr of a string, near enough for a message. */
function quoted(text) {
  return typeof text === "string" ? `'${text}'` : String(text);
}

/** urllib.parse.unquote: runs of %XX become UTF-8 text (bad bytes U+FFFD), a stray % stays. */
function unquote(text) {
  return text.replace(/(?:%[0-9A-Fa-f]{2})+/g, (run) =>
    new TextDecoder().decode(Uint8Array.from(run.match(/%../g), (byte) => parseInt(byte.slice(1), 16))));
}

/** Python's float(text): surrounding whitespace, "_" between digits, inf and nan; else an Error. */
function pythonFloat(text) {
  const t = text.trim();
  if (/^[+-]?(?:inf|infinity)$/i.test(t)) return t[0] === "-" ? -Infinity : Infinity;
  if (/^[+-]?nan$/i.test(t)) return NaN;
  const digits = "\\d(?:_?\\d)*";
  const decimal = new RegExp(`^[+-]?(?:${digits}(?:\\.(?:${digits})?)?|\\.${digits})(?:[eE][+-]?${digits})?$`);
  if (!decimal.test(t)) throw new Error(`could not convert string to float: ${quoted(text)}`);
  return Number(t.replace(/_/g, ""));
}

/** scenario.from_query: the scenario's own parameters in a page's query string, or null. */
export function scenarioFromQuery(query) {
  const pieces = String(query || "").replace(/^\?+/, "").split("&")
    .filter((piece) => SCENARIO_KEYS.includes(piece.split("=")[0]));
  return pieces.join("&") || null;
}

/** scenario.decode, rule for rule: {arch (or null), state} with the FreezeSim state keys the text
 *  gives (frozen, seed, optimizer/lr/momentum, the switches). Throws ScenarioError like Python. */
export function decodeScenario(text) {
  if (typeof text !== "string" || !text.trim()) {
    throw new ScenarioError(`A scenario is a text like ${quoted(SCENARIO_EXAMPLE)}; got ${quoted(text)}`);
  }
  text = text.trim().split("#")[0];
  if (text.includes("?")) text = scenarioFromQuery(text.slice(text.indexOf("?") + 1)) || "";  // a whole link
  const pieces = text.split("&").filter(Boolean);
  if (!pieces.length || pieces.some((piece) => !piece.includes("="))) {
    throw new ScenarioError(`Not a scenario: ${quoted(text)}. It looks like ${quoted(SCENARIO_EXAMPLE)}`);
  }
  // Values stay percent-encoded until split: a block name may hold an encoded comma.
  const pairs = pieces.map((piece) => {
    const at = piece.indexOf("=");
    return [unquote(piece.slice(0, at)), piece.slice(at + 1)];
  });
  const fields = new Map(pairs);
  const unknown = [...fields.keys()].filter((key) => !SCENARIO_KEYS.includes(key)).sort();
  if (unknown.length || fields.size !== pairs.length) {
    throw new ScenarioError(`Unknown or repeated scenario keys [${(unknown.length ? unknown : pairs.map(([k]) => k)).map(quoted).join(", ")}]; ` +
      `valid keys: ${SCENARIO_KEYS.join(", ")} (e.g. ${quoted(SCENARIO_EXAMPLE)})`);
  }
  const state = {};
  if (fields.has("frozen")) state.frozen = fields.get("frozen").split(",").filter(Boolean).map(unquote);
  for (const [key, value] of fields) if (key !== "frozen") fields.set(key, unquote(value));
  if (fields.has("seed")) {
    const seed = fields.get("seed");
    if (!/^-?\d+$/.test(seed)) throw new ScenarioError(`seed must be an integer, got ${quoted(seed)}`);
    state.seed = Number(seed);
  }
  if (fields.has("opt")) {
    const opt = fields.get("opt");
    const parts = opt.split(",");
    const form = `opt must read sgd,<lr>,<momentum> or adam,<lr>; got ${quoted(opt)}`;
    let numbers;
    try { numbers = parts.slice(1).map(pythonFloat); } catch { throw new ScenarioError(form); }
    if (parts[0] === "sgd" && numbers.length === 2) Object.assign(state, { optimizer: "sgd", lr: numbers[0], momentum: numbers[1] });
    else if (parts[0] === "adam" && numbers.length === 1) Object.assign(state, { optimizer: "adam", lr: numbers[0] });
    else throw new ScenarioError(form);
  }
  if (fields.has("switches")) {
    const on = fields.get("switches").split(",").filter(Boolean);
    const shorts = vocabulary.switches.map((sw) => sw.short);
    const bad = on.filter((short) => !shorts.includes(short));
    if (bad.length) throw new ScenarioError(`Unknown switch(es) [${bad.map(quoted).join(", ")}]; valid: ${shorts.join(", ")}`);
    for (const sw of vocabulary.switches) state[sw.key] = on.includes(sw.short);
  }
  return { arch: fields.get("arch") || null, state };
}

/** The scenario string a page address's hash carries as `#scenario=<encodeURIComponent(s)>`
 *  (other `&`-separated hash parameters may come before or after it), or null. A hand-written
 *  link may leave the scenario's own `&` unencoded: the scenario keys that follow are kept. */
export function scenarioFromHash(hash) {
  const pieces = String(hash || "").replace(/^#/, "").split("&");
  const at = pieces.findIndex((piece) => piece.startsWith("scenario="));
  if (at < 0) return null;
  const first = pieces[at].slice("scenario=".length);
  let text;
  try { text = decodeURIComponent(first); } catch { text = first; }
  const rest = [];
  for (const piece of pieces.slice(at + 1)) {
    if (!SCENARIO_KEYS.includes(piece.split("=")[0])) break;
    rest.push(piece);
  }
  return [text, ...rest].join("&");
}

/** The link a static page (offline mode) copies: the address without its hash, then the scenario. */
export function scenarioLink(href, scenario) {
  return `${String(href).split("#")[0]}#scenario=${encodeURIComponent(scenario)}`;
}

/** What a static page can apply of a decoded scenario: the frozen blocks and the switches. The
 *  rest (another architecture, another seed or optimizer, unknown blocks) needs a kernel; each
 *  such part is one sentence in `skipped`. `page` = {arch, order, seed, optimizer: {name, lr, momentum}}.
 *  Returns {frozen (or null: keep), switches (or null: keep), skipped}. */
export function scenarioToApply(decoded, page) {
  const { arch, state } = decoded;
  const skipped = [];
  let frozen = null;
  if (arch && arch !== page.arch) {
    skipped.push(`arch=${arch} is not the model on this page (${page.arch})` +
      (state.frozen ? ", so its frozen blocks were not applied" : ""));
  } else if (state.frozen) {
    const known = new Set(page.order);
    const unknown = state.frozen.filter((b) => !known.has(b));
    if (unknown.length) skipped.push(`${page.arch} has no block ${unknown.join(", ")}`);
    const wanted = new Set(state.frozen);
    frozen = page.order.filter((b) => wanted.has(b));
  }
  let switches = null;
  if (vocabulary.switches.some((sw) => sw.key in state)) {
    switches = Object.fromEntries(vocabulary.switches.filter((sw) => sw.key in state).map((sw) => [sw.key, Boolean(state[sw.key])]));
  }
  if ("seed" in state && state.seed !== page.seed) skipped.push(`seed=${state.seed} needs a kernel (this page uses seed ${page.seed})`);
  const opt = page.optimizer || {};
  if ("optimizer" in state && (state.optimizer !== opt.name || state.lr !== opt.lr ||
      (state.optimizer === "sgd" && state.momentum !== opt.momentum))) {
    const wanted = [state.optimizer, state.lr, ...(state.optimizer === "sgd" ? [state.momentum] : [])].join(",");
    skipped.push(`opt=${wanted} needs a kernel (this page uses ${opt.name}, learning rate ${opt.lr})`);
  }
  return { frozen, switches, skipped };
}

// --------------------------------------------------------------------------- small DOM helpers

/** An element builder; the listeners it adds (`on...` attributes) are removed when `signal` aborts. */
function elementBuilder(signal) {
  return function h(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value, { signal });
      else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
    return node;
  };
}

function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const PRESETS = [
  ["probe", "Linear probe", "Train the head only"],
  ["last", "Last block + head", "Train the head and the block before it"],
  ["lastk", "Last k blocks", "Train the last k blocks (head included)"],
  ["affine", "Norm affine + head",
    "Parameter-efficient: the head plus every normalisation layer's scale and shift (BatchNorm, LayerNorm, GroupNorm)"],
  ["first", "First block only",
    "Surgical fine-tuning of the first block (Lee et al. 2023); the new head stays random here"],
  ["all", "Everything", "Fine-tune every block"],
];

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "—";
  if (value === 0) return "0";
  return Math.abs(value) < 1e-3 || Math.abs(value) >= 1e4 ? value.toExponential(2) : String(Number(value.toPrecision(digits)));
}

function sparkline(values, top, state) {
  const w = 90, hgt = 20;
  const svg = s("svg", { class: `fv-spark fv-spark-${state === "t" ? "t" : "f"}`, width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}` });
  if (values.length > 1 && top > 0) {
    const pts = values.map((v, i) => `${(i / (values.length - 1)) * (w - 2) + 1},${hgt - 2 - (v / top) * (hgt - 4)}`);
    svg.append(s("polyline", { points: pts.join(" "), class: "fv-spark-line" }));
  } else {
    svg.append(s("line", { x1: 1, y1: hgt - 2, x2: w - 1, y2: hgt - 2, class: "fv-spark-line" }));
  }
  return svg;
}

/** A loss chart: one polyline per series of [step, loss] points (the report's curve, A/B). */
function lossChart(series, title) {
  const w = 300, hgt = 150, pad = 30;
  const values = series.flatMap((c) => c.points.map((p) => p[1]));
  const steps = series.flatMap((c) => c.points.map((p) => p[0]));
  const svg = s("svg", { class: "fv-chart", width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, role: "img", "aria-label": title });
  svg.append(s("text", { x: pad, y: 12, class: "fv-caption" }, title));
  if (!values.length) {
    svg.append(s("text", { x: w / 2, y: hgt / 2, "text-anchor": "middle", class: "fv-caption" }, "train to see the loss"));
    return svg;
  }
  const lo = Math.min(...values), hi = Math.max(...values);
  const span = hi - lo || 1, last = Math.max(...steps), first = Math.min(...steps);
  const X = (v) => pad + ((v - first) / Math.max(1, last - first)) * (w - pad - 10);
  const Y = (v) => hgt - 20 - ((v - lo) / span) * (hgt - 45);
  svg.append(s("line", { x1: pad, y1: hgt - 20, x2: w - 10, y2: hgt - 20, class: "fv-axis" }));
  svg.append(s("line", { x1: pad, y1: 20, x2: pad, y2: hgt - 20, class: "fv-axis" }));
  svg.append(s("text", { x: pad - 3, y: Y(hi) + 4, "text-anchor": "end", class: "fv-tick" }, hi.toFixed(2)));
  svg.append(s("text", { x: pad - 3, y: Y(lo) + 4, "text-anchor": "end", class: "fv-tick" }, lo.toFixed(2)));
  svg.append(s("text", { x: w - 10, y: hgt - 6, "text-anchor": "end", class: "fv-tick" }, `step ${last}`));
  for (const c of series) {
    svg.append(s("polyline", { points: c.points.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), class: `fv-curve ${c.cls}` }));
    for (const [x, y] of c.points.slice(-1)) svg.append(s("circle", { cx: X(x), cy: Y(y), r: 3, class: `fv-curve-dot ${c.cls}` }));
  }
  return svg;
}


// --------------------------------------------------------------------------- the widget

/** How long a click waits for the kernel before the widget gives up on it (a dead or restarted
 *  kernel never answers): the buttons work again and a sentence says what happened. */
const PENDING_TIMEOUT_MS = 120000;
/** How long a passing status ("Scenario copied") stays before it clears. */
const FLASH_MS = 2500;
/** Colours the notebook's theme decides (text, muted text, bar track): the palette leaves them alone. */
const THEME_KEYS = new Set(["ink", "muted", "baseline"]);

/** What every panel shares: the model, the view's own state, the derived readings of the model,
 *  and the only ways to start a timer, an animation frame or a listener, so `close` ends them all.
 *
 *  Offline mode: a non-empty `offline_note` means no kernel is behind the model (a static page).
 *  Then `needsKernel` disables the controls that would ask the kernel for something. */
function widgetContext(model, el) {
  const aborter = new AbortController();
  const timers = {};            // one timeout per purpose
  const frames = new Set();     // animation frames not yet run
  const listeners = [];         // [event, handler] on the model
  const note = model.get("offline_note");
  const offlineNote = typeof note === "string" && note.trim() ? note : "";
  const h = elementBuilder(aborter.signal);
  const root = h("div", { class: offlineNote ? "fv fv-offline" : "fv", "data-kernel": offlineNote ? "offline" : "idle" });
  el.append(root);
  const ctx = {
    model, el, root, h,
    signal: aborter.signal,
    offline: Boolean(offlineNote),
    offlineNote,
    closed: false,
    view: {
      frozen: model.get("frozen") || [],
      switches: { ...(model.get("switches") || {}) },
      pending: null,        // {kind, started, text} while the kernel works on a click
      lastReportStep: (model.get("report") || {}).step || 0,
      animation: null,
      animations: 0,        // gradient-dot passes completed (the browser test reads it)
      flash: "",            // a passing status ("Scenario copied")
      notice: "",           // a status that stays until the next change (offline: the link's scenario)
    },
    get: (name) => model.get(name),
    blocks: () => model.get("blocks") || [],
    order: () => ctx.blocks().map((b) => b.name),
    headName: () => (ctx.blocks().find((b) => b.head) || ctx.blocks()[ctx.blocks().length - 1] || {}).name,
    states: () => blockStates(ctx.blocks(), ctx.view.frozen, ctx.view.switches),
    button: (cls, label, onclick, title) => h("button", { type: "button", class: `fv-button ${cls}`, onclick, title }, label),
    /** One timer per purpose: setting it again replaces the old one; `close` clears them all. */
    later(purpose, callback, ms) {
      clearTimeout(timers[purpose]);
      delete timers[purpose];
      if (ctx.closed) return;
      timers[purpose] = setTimeout(() => { delete timers[purpose]; callback(); }, ms);
    },
    cancel(purpose) {
      clearTimeout(timers[purpose]);
      delete timers[purpose];
    },
    /** requestAnimationFrame, remembered until it runs so `close` can cancel it. */
    frame(callback) {
      if (ctx.closed) return null;
      const id = requestAnimationFrame((now) => { frames.delete(id); callback(now); });
      frames.add(id);
      return id;
    },
    cancelFrame(id) {
      if (id === null || id === undefined) return;
      cancelAnimationFrame(id);
      frames.delete(id);
    },
    /** model.on, undone by `close`. */
    listen(event, handler) {
      model.on(event, handler);
      listeners.push([event, handler]);
    },
    /** Controls that ask the kernel for something: disabled in offline mode (class fv-needs-kernel). */
    needsKernel(...nodes) {
      if (!ctx.offline) return;
      for (const node of nodes) { node.disabled = true; node.classList.add("fv-needs-kernel"); }
    },
    /** The view is gone: no timer, frame or listener may fire later. */
    close() {
      ctx.closed = true;
      for (const timer of Object.values(timers)) clearTimeout(timer);
      for (const key of Object.keys(timers)) delete timers[key];
      for (const id of frames) cancelAnimationFrame(id);
      frames.clear();
      for (const [event, handler] of listeners.splice(0)) model.off(event, handler);
      aborter.abort();
    },
  };
  ctx.bars = barAnimator(ctx);
  return ctx;
}

/** Bars are rebuilt on every draw; each starts at its previous width and moves to the new one
 *  in the next frame, so the CSS transition shows the change. Shared by the cost and report panels. */
function barAnimator(ctx) {
  const widths = new Map();
  let queue = [];
  function fill(key, share, cls) {
    const width = `${(Math.max(0, Math.min(1, share)) * 100).toFixed(1)}%`;
    const node = ctx.h("span", { class: `fv-bar-fill ${cls}`, style: `width:${widths.get(key) ?? "0%"}`, "data-width": width });
    widths.set(key, width);
    queue.push(node);
    return node;
  }
  function settle() {
    const nodes = queue;
    queue = [];
    ctx.frame(() => { for (const node of nodes) node.style.width = node.dataset.width; });
  }
  return { fill, settle };
}

/** The top row (architecture picker, weights note, status line) and the error line at the bottom. */
function statusPanel(ctx) {
  const { h, view, get } = ctx;
  const archSelect = h("select", { class: "fv-arch", "aria-label": "Architecture",
    onchange: () => ctx.act("arch", { name: archSelect.value }) });
  const weightsNote = h("span", { class: "fv-weights" });
  const busy = h("span", { class: "fv-busy", role: "status", "aria-live": "polite" });
  const top = h("div", { class: "fv-row fv-top" }, h("label", {}, "Model ", archSelect), weightsNote, busy);
  const error = h("div", { class: "fv-error", role: "alert" });
  ctx.needsKernel(archSelect);

  function draw() {
    const options = get("arch_options") || [];
    archSelect.replaceChildren(...options.map((o) => h("option", { value: o.name, selected: o.name === get("arch") }, o.label)));
    if (!options.some((o) => o.name === get("arch"))) {
      archSelect.prepend(h("option", { value: get("arch"), selected: true }, get("arch") || "custom model"));
    }
    weightsNote.textContent = get("weights_note") || "";
    weightsNote.classList.toggle("fv-random", (get("weights_note") || "").startsWith("random"));
  }

  /** The status line: the kernel's own word while it has one, else what the pending click is
   *  doing, else a passing message, else a standing notice (so no "Measuring…" or "Scenario
   *  copied" outlives its moment). */
  function show() {
    busy.textContent = get("busy") || (view.pending ? view.pending.text : "") || view.flash || view.notice || "";
  }

  function flash(text) {
    view.flash = text;
    show();
    ctx.later("flash", () => { view.flash = ""; show(); }, FLASH_MS);
  }

  function notice(text) {
    view.notice = text;
    show();
  }

  function showError(text) {
    error.textContent = text;
  }

  return { top, error, draw, show, flash, notice, showError };
}

/** The presets row and its k. */
function presetPanel(ctx) {
  const { h } = ctx;
  const kInput = h("input", { type: "number", min: "1", value: "3", class: "fv-k", "aria-label": "k blocks" });
  const node = h("div", { class: "fv-row fv-presets", role: "group", "aria-label": "Presets" },
    h("span", { class: "fv-label" }, "Presets"),
    PRESETS.map(([kind, label, title]) => h("button", {
      type: "button", class: `fv-button fv-preset fv-preset-${kind}`, title, "data-preset": kind,
      onclick: () => ctx.applyPreset(kind, () => Math.max(1, Number(kInput.value) || 1)),
    }, label)),
    h("label", { class: "fv-klabel" }, "k ", kInput));
  return { node };
}

/** The blocks from input to loss, the backward path, and the gradient dots of a step. A click or
 *  Space on a block toggles it (one listener on the box, so a redraw adds none). */
function diagramPanel(ctx) {
  const { view, root } = ctx;
  const node = ctx.h("div", { class: "fv-diagram-box",
    onclick: (e) => {
      const block = e.target.closest && e.target.closest(".fv-block");
      if (block && node.contains(block)) ctx.toggle(block.dataset.block);
    },
    onkeydown: (e) => {
      const block = e.target.closest && e.target.closest(".fv-block");
      if (!block || !node.contains(block)) return;
      const item = block.dataset.block;
      if (e.key === " " || e.key === "Enter") { e.preventDefault(); ctx.toggle(item); }
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const names = ctx.order();
        const next = names[names.indexOf(item) + (e.key === "ArrowRight" ? 1 : -1)];
        if (next) node.querySelector(`svg [data-block="${CSS.escape(next)}"]`)?.focus();
      }
    } });
  let path = null;   // where the dots run: {startX, endX, y}, or null when nothing trains

  function draw(st, backward) {
    const names = ctx.order();
    const items = ["input", ...names, "loss"];
    const widths = items.map((n) => Math.max(64, 12 + 7.2 * Math.max(n.length, n === "input" || n === "loss" ? 0 : 9)));
    const gap = 22;
    const xs = [];
    let x = 6;
    for (const w of widths) { xs.push(x); x += w + gap; }
    const width = x - gap + 6;
    const top = 24, height = 46, lineY = 92;
    const svg = s("svg", { class: "fv-diagram", width, height: 128, viewBox: `0 0 ${width} 128`, role: "group",
      "aria-label": "Blocks from input to loss; press Space on a block to freeze or train it" });
    svg.append(s("defs", {},
      s("pattern", { id: "fv-hatch", patternUnits: "userSpaceOnUse", width: 7, height: 7, patternTransform: "rotate(45)" },
        s("rect", { width: 7, height: 7, class: "fv-hatch-bg" }), s("line", { x1: 0, y1: 0, x2: 0, y2: 7, class: "fv-hatch-line" })),
      s("marker", { id: "fv-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" },
        s("path", { d: "M0,0 L10,5 L0,10 z", class: "fv-arrowhead" })),
      s("marker", { id: "fv-arrow-red", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 5, markerHeight: 5, orient: "auto-start-reverse" },
        s("path", { d: "M0,0 L10,5 L0,10 z", class: "fv-gradient-fill" }))));
    svg.append(s("text", { x: 6, y: 13, class: "fv-caption" }, "forward: input → loss"));
    const onPath = new Set(backward.flow);
    const passThrough = new Set(backward.passThrough);
    items.forEach((item, i) => {
      const cx = xs[i] + widths[i] / 2;
      if (i) svg.append(s("line", { x1: xs[i] - gap + 2, y1: top + height / 2, x2: xs[i] - 3, y2: top + height / 2,
        class: "fv-forward", "marker-end": "url(#fv-arrow)" }));
      if (item === "input" || item === "loss") {
        svg.append(s("g", { class: "fv-endpoint" }, s("rect", { x: xs[i], y: top, width: widths[i], height, rx: 8 }),
          s("text", { x: cx, y: top + height / 2 + 4, "text-anchor": "middle" }, item)));
        return;
      }
      const state = st[item];
      const trainable = state === "t";
      const g = s("g", { class: `fv-block fv-state-${state}${onPath.has(item) ? " fv-on-path" : ""}`, "data-block": item,
        "data-state": state, tabindex: 0, role: "switch", "aria-checked": String(trainable),
        "aria-label": `${item}: ${stateWord(state)}. Press Space to ${trainable ? "freeze" : "train"} it.` });
      g.append(s("rect", { x: xs[i], y: top, width: widths[i], height, rx: 8, class: "fv-block-fill" }));
      if (!trainable) g.append(s("rect", { x: xs[i], y: top, width: widths[i], height, rx: 8, class: "fv-block-hatch" }));
      if (state === "a") g.append(s("rect", { x: xs[i], y: top + height - 9, width: widths[i], height: 9, rx: 3, class: "fv-block-norm" }));
      g.append(s("text", { x: cx, y: top + 19, "text-anchor": "middle", class: "fv-block-name" }, item));
      g.append(s("text", { x: cx, y: top + 34, "text-anchor": "middle", class: "fv-block-state" },
        (trainable ? "" : "❄ ") + stateWord(state).replace("frozen, ", "")));
      g.append(s("title", {}, `${item}: ${stateWord(state)} (click or Space to toggle)`));
      svg.append(g);
      let note = null;
      if (passThrough.has(item)) note = ["pass-through", "fv-note fv-note-pass"];
      else if (onPath.has(item)) note = ["∇ weights", "fv-note fv-note-grad"];
      else if (item === backward.stopAt) note = ["✕ stops here", "fv-note fv-note-stop"];
      if (note) svg.append(s("text", { x: cx, y: lineY + 20, "text-anchor": "middle", class: note[1] }, note[0]));
    });
    if (backward.flow.length) {
      const earliest = items.indexOf(backward.flow[backward.flow.length - 1]);
      const startX = xs[items.length - 1] + widths[items.length - 1] / 2;
      const endX = xs[earliest] + 4;
      svg.append(s("line", { x1: startX, y1: lineY, x2: endX, y2: lineY, class: "fv-gradient-line", "marker-end": "url(#fv-arrow-red)" }));
      svg.append(s("text", { x: startX, y: lineY - 6, "text-anchor": "end", class: "fv-note fv-note-grad" }, "backward"));
      path = { startX, endX, y: lineY };
    } else {
      svg.append(s("text", { x: xs[items.length - 1] + widths[items.length - 1] / 2, y: lineY + 4, "text-anchor": "end",
        class: "fv-note fv-note-stop" }, "no backward pass: nothing trains"));
      path = null;
    }
    const old = node.querySelector("svg");
    const running = view.animation && old ? old.querySelector(".fv-dots") : null;
    svg.append(running || s("g", { class: "fv-dots" }));  // a redraw mid-animation keeps the dots going
    const scroll = node.scrollLeft;
    const focused = old && old.contains(document.activeElement) ? document.activeElement.dataset.block : null;
    if (old) old.replaceWith(svg); else node.append(svg);
    if (scroll) node.scrollLeft = scroll;  // (setting it forces a layout: only when scrolled)
    if (focused) svg.querySelector(`.fv-block[data-block="${CSS.escape(focused)}"]`)?.focus();  // keyboard users keep their place
  }

  /** Dots travel from the loss back along the path and stop at the earliest block on it; they
   *  go round again while the kernel is still stepping, and fade out once it has answered. */
  function startDots() {
    stopDots();
    const layer = node.querySelector(".fv-dots");
    if (!path || !layer) return;
    const { startX, endX, y } = path;
    const dots = [0, 1, 2, 3].map(() => s("circle", { r: 4.5, cy: y, cx: startX, class: "fv-dot" }));
    layer.replaceChildren(...dots);
    const duration = 700, stagger = 110, linger = 500;
    const began = performance.now();
    let counted = false;
    const frame = (now) => {
      const t = now - began;
      dots.forEach((dot, i) => {
        const local = Math.min(1, Math.max(0, (t - i * stagger) / duration));
        dot.setAttribute("cx", String(startX + (endX - startX) * local));
        dot.setAttribute("opacity", local >= 1 ? "0.45" : "1");
      });
      const arrived = t > duration + 3 * stagger;
      if (arrived && !counted && startX !== endX) {   // a pass the dots really travelled
        counted = true;
        root.dataset.animations = String(++view.animations);
      }
      const stepping = view.pending && view.pending.kind === "step";
      if (arrived && stepping) startDots();
      else if (arrived && t > duration + 3 * stagger + linger) { layer.replaceChildren(); view.animation = null; }
      else view.animation = ctx.frame(frame);
    };
    view.animation = ctx.frame(frame);
  }

  function stopDots() {
    if (view.animation) ctx.cancelFrame(view.animation);
    view.animation = null;
  }

  return { node, draw, startDots, stopDots };
}

/** The flow sentence and the three cost bars, computed here from the table. */
function costPanel(ctx) {
  const { h, get } = ctx;
  const flowLine = h("p", { class: "fv-flow" });
  const node = h("div", { class: "fv-costs" });
  // What a screen reader says after a toggle, a preset or a switch: the new backward path and
  // costs, politely (after what it is reading). Visually hidden: the panel shows the same.
  const announcer = h("div", { class: "fv-announce", role: "status", "aria-live": "polite", "aria-atomic": "true" });
  let summary = "";

  function costRow(label, value, reference, unit, detail, cls) {
    const share = reference ? Math.min(1, value / reference) : 0;
    return h("div", { class: `fv-cost ${cls}` },
      h("span", { class: "fv-cost-label" }, label),
      h("span", { class: "fv-bar" }, ctx.bars.fill(`cost:${cls}`, share, "")),
      h("span", { class: "fv-cost-text" }, `${shareText(value, reference)}: ${human(value, unit)} of ${human(reference, unit)}`,
        detail ? h("span", { class: "fv-cost-detail" }, ` (${detail})`) : null));
  }

  function draw(st, table, backward) {
    const sentence = flowSentence(backward.flow, backward.stopAt);
    flowLine.textContent = capitalise(sentence);
    flowLine.dataset.sentence = sentence;
    const all = Object.fromEntries(ctx.order().map((b) => [b, "t"]));
    const now = configurationCost(table, st);
    const everything = configurationCost(table, all);
    const slots = (get("optimizer") || {}).slots ?? 1;
    const mem = trainingMemory(ctx.blocks(), st, now.saved, slots);
    const memAll = trainingMemory(ctx.blocks(), all, everything.saved, slots);
    const total = ctx.blocks().reduce((sum, b) => sum + b.params, 0);
    // A case missing from the table: the kernel is measuring it, or (offline) nobody will.
    const missing = !now.missing ? null : ctx.offline
      ? h("span", { class: "fv-unmeasured" }, " (this case was not measured for this page: its figures leave it out)")
      : h("span", { class: "fv-measuring" }, " (measuring the new case in the kernel…)");
    node.replaceChildren(
      h("div", { class: "fv-cost-title" }, "This configuration vs. training everything", missing),
      costRow("Trainable parameters", mem.trainable, total, "", null, "fv-cost-params"),
      costRow("Backward compute", now.backwardFlops, everything.backwardFlops, "FLOP", null, "fv-cost-flops"),
      costRow("Training memory", mem.total, memAll.total, "B",
        `activations ${human(mem.activations, "B")} + gradients ${human(mem.gradients, "B")} + optimizer ${human(mem.optimizer, "B")}`,
        "fv-cost-memory"));
    ctx.bars.settle();
    summary = `${capitalise(sentence)}. Trainable parameters ${shareText(mem.trainable, total)}, ` +
      `backward compute ${shareText(now.backwardFlops, everything.backwardFlops)}, ` +
      `training memory ${shareText(mem.total, memAll.total)} of training everything.`;
    node.dataset.backwardFlops = String(now.backwardFlops);
    node.dataset.saved = String(now.saved);
    node.dataset.trainable = String(mem.trainable);
    node.dataset.memory = String(mem.total);
  }

  /** Say ``what`` changed, then the path and costs just drawn. */
  function announce(what) {
    announcer.textContent = `${what} ${summary}`;
  }

  return { flowLine, node, announcer, draw, announce };
}

/** The kernel's buttons (step, ten steps, reset, ranking), the optimizer and the seed; in
 *  offline mode, the note that says why they are disabled, just above them. */
function controlsPanel(ctx) {
  const { h, get, button } = ctx;
  const stepButton = button("fv-primary fv-step", "Train step", () => ctx.act("step"), "One real step in the kernel");
  const trainButton = button("fv-train", "Train 10 steps", () => ctx.act("train", { steps: 10 }));
  const resetButton = button("fv-reset", "Reset", () => ctx.act("reset"), "Weights, optimizer and steps back to the start");
  const rankButton = button("fv-rank", "Rank blocks by |g|/|w|", () => ctx.act("rank"),
    "One full backward pass with every block trainable; nothing is updated");
  const optimizerSelect = h("select", { class: "fv-optimizer", "aria-label": "Optimizer",
    onchange: () => ctx.act("settings", { optimizer: optimizerSelect.value }) },
  h("option", { value: "sgd" }, "SGD, momentum"), h("option", { value: "adam" }, "Adam"));
  const seedInput = h("input", { type: "number", class: "fv-seed", "aria-label": "Seed", min: "0",
    onchange: () => ctx.act("settings", { seed: Number(seedInput.value) }) });
  const controls = h("div", { class: "fv-row fv-controls" }, stepButton, trainButton, resetButton, rankButton,
    h("label", {}, "Optimizer ", optimizerSelect), h("label", {}, "Seed ", seedInput));
  ctx.needsKernel(stepButton, trainButton, resetButton, rankButton, optimizerSelect, seedInput);
  const nodes = ctx.offline ? [h("p", { class: "fv-offline-note", role: "note" }, ctx.offlineNote), controls] : [controls];

  function draw() {
    const opt = get("optimizer") || {};
    optimizerSelect.value = opt.name || "sgd";
    seedInput.value = String(get("seed") ?? 0);
  }

  return { nodes, draw };
}

/** The switches (checkboxes), from the vocabulary the kernel sent. */
function switchPanel(ctx) {
  const boxes = {};
  const node = ctx.h("div", { class: "fv-switches" }, vocabulary.switches.map(({ key, label }) => {
    const box = ctx.h("input", { type: "checkbox", class: `fv-switch fv-switch-${key}`, onchange: () => ctx.setSwitch(key, box.checked) });
    boxes[key] = box;
    return ctx.h("label", { class: "fv-switch-label" }, box, " ", label);
  }));

  function draw() {
    for (const [key, box] of Object.entries(boxes)) box.checked = Boolean(ctx.view.switches[key]);
  }

  return { node, draw };
}

/** The last step's report: summary, warnings, the per-block table, the ranking, the loss curve. */
function reportPanel(ctx) {
  const { h, get, view } = ctx;
  const summary = h("p", { class: "fv-summary" });
  const warnings = h("div", { class: "fv-warnings", role: "status" });
  const table = h("table", { class: "fv-table" });
  const loss = h("div", { class: "fv-loss" });
  const ranking = h("p", { class: "fv-ranking" });
  const panels = h("div", { class: "fv-panels" }, h("div", { class: "fv-table-box" }, table, ranking), loss);

  function bar(key, value, top, cls, log = false) {
    let share = 0;
    if (value !== null && value !== undefined && top > 0) {
      share = log ? Math.max(0.04, 1 + Math.log10(Math.max(value, top * 1e-4) / top) / 4) : value / top;
    }
    return h("span", { class: "fv-bar fv-mini" }, ctx.bars.fill(key, share, cls));
  }

  function draw() {
    const report = get("report") || {};
    const history = get("history") || [];
    const rank = get("ranking") || {};
    const st = ctx.states();
    const rows = report.blocks || [];
    const byName = Object.fromEntries(rows.map((r) => [r.name, r]));
    const grads = rows.map((r) => r.gradNorm || 0);
    const deltas = rows.flatMap((r) => [r.weightDelta || 0, r.bnDrift || 0]);
    const topGrad = Math.max(0, ...grads), topDelta = Math.max(0, ...deltas);
    const distances = Object.fromEntries(ctx.order().map((b, i) => [b, history.map((p) => p.distances[i] || 0)]));
    const topDistance = Math.max(0, ...Object.values(distances).flat());
    const ranked = Object.entries(rank.values || {}).sort((a, b) => b[1] - a[1]);
    const rankOf = Object.fromEntries(ranked.map(([b], i) => [b, i + 1]));
    const topRank = ranked.length ? ranked[0][1] : 0;
    table.replaceChildren(
      h("thead", {}, h("tr", {}, ["block", "state", "‖gradient‖", "‖Δ weights‖ this step", "‖Δ BN mean‖",
        "moved since start", "|g|/|w| rank"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ctx.order().map((name) => {
        const r = byName[name];
        const state = st[name];
        const note = r && r.movedWhileFrozen ? h("strong", { class: "fv-alarm" }, " moved while frozen!") : null;
        const drift = r && r.driftWhileFrozen ? h("strong", { class: "fv-drift-text" }, " drifted while frozen!") : null;
        return h("tr", { "data-block": name, class: `fv-row-${state}` },
          h("th", { scope: "row" }, name),
          h("td", { class: `fv-state-word fv-word-${state}` }, stateWord(state)),
          h("td", {}, bar(`${name}:grad`, r ? r.gradNorm : null, topGrad, "fv-fill-grad", true),
            h("span", { class: "fv-num" }, r ? (r.gradNorm === null ? (r.passThrough ? "none · pass-through" : "none") : fmt(r.gradNorm)) : "")),
          h("td", {}, bar(`${name}:delta`, r ? r.weightDelta : 0, topDelta, r && r.movedWhileFrozen ? "fv-fill-alarm" : "fv-fill-train"),
            h("span", { class: "fv-num" }, r ? fmt(r.weightDelta) : ""), note),
          h("td", {}, bar(`${name}:drift`, r ? r.bnDrift : 0, topDelta, "fv-fill-drift"),
            h("span", { class: "fv-num" }, r && r.bnDrift ? fmt(r.bnDrift) : ""), drift),
          h("td", {}, sparkline(distances[name] || [], topDistance, state), h("span", { class: "fv-num" },
            history.length ? fmt(distances[name][distances[name].length - 1]) : "")),
          h("td", {}, rankOf[name] ? [bar(`${name}:rank`, rank.values[name], topRank, "fv-fill-rank"),
            h("span", { class: "fv-num" }, `#${rankOf[name]} ${fmt(rank.values[name])}`)] : ""));
      })));
    ctx.bars.settle();
    if (ranked.length) {
      const best = ranked[0][0];
      ranking.textContent = `Before step ${rank.step + 1}, ${best} has the largest relative gradient |g|/|w| = ${fmt(ranked[0][1])}: ` +
        `unfrozen, it would move most (Auto-RGN, Lee et al. 2023, picks blocks this way). Computing it took one full backward pass.`;
    } else {
      ranking.textContent = "";
    }
    summary.dataset.backwardFlops = report.step ? String(report.backwardFlops) : "";
    summary.dataset.saved = report.step ? String(report.saved) : "";
    if (report.step) {
      summary.replaceChildren(h("b", {}, "Step ", h("span", { class: "fv-step-number" }, String(report.step))),
        `: loss ${report.loss.toFixed(3)}, the step took ${Math.round(report.stepMs)} ms in the kernel` +
        (report.measureMs ? ` (+${Math.round(report.measureMs)} ms measuring the blocks once)` : "") + ".",
        h("span", { class: "fv-changed" }));
    } else {
      summary.replaceChildren(h("b", {}, "Step ", h("span", { class: "fv-step-number" }, String(report.step || 0))),
        ": nothing trained yet. Choose what to freeze, then press Train step.");
    }
    const notes = [];
    if ((report.movedWhileFrozen || []).length) notes.push(h("p", { class: "fv-alarm" },
      `⚠ Frozen but moved: ${report.movedWhileFrozen.join(", ")}. The optimizer still holds them, zero_grad(set_to_none=False) ` +
      "left a zero gradient, and momentum kept pushing. Build the optimizer from the trainable parameters only."));
    if ((report.driftedWhileFrozen || []).length) notes.push(h("p", { class: "fv-drift-text" },
      `⚠ BatchNorm statistics drifted in frozen blocks: ${report.driftedWhileFrozen.join(", ")}. In train mode BatchNorm ` +
      "updates its running mean and variance even with requires_grad=False; put frozen BatchNorm in eval mode."));
    if (view.switches.stale_gradients && !(report.movedWhileFrozen || []).length) notes.push(h("p", {},
      "Stale gradients are on: a block moves while frozen only if it trained before. Train a step, freeze a block, step again."));
    warnings.replaceChildren(...notes);
    drawStates();
    loss.replaceChildren(lossChart([{ points: history.map((p) => [p.step, p.loss]), cls: "fv-curve-b" }], "loss per step"));
  }

  /** After a toggle: the table's state words and the summary follow the new configuration;
   *  its numbers stay those of the last step. */
  function drawStates() {
    const st = ctx.states();
    for (const row of table.querySelectorAll("tbody tr[data-block]")) {
      const state = st[row.dataset.block];
      row.className = `fv-row-${state}`;
      const word = row.querySelector(".fv-state-word");
      word.textContent = stateWord(state);
      word.className = `fv-state-word fv-word-${state}`;
      row.querySelector(".fv-spark")?.setAttribute("class", `fv-spark fv-spark-${state === "t" ? "t" : "f"}`);
    }
    const report = get("report") || {};
    const changed = report.step && ctx.order().some((b) => (report.frozen || []).includes(b) !== view.frozen.includes(b));
    const note = summary.querySelector(".fv-changed");
    if (note) note.textContent = changed ? " The table shows that step; you have changed the configuration since." : "";
  }

  return { nodes: [summary, warnings, panels], draw, drawStates };
}

/** A/B: pin a configuration as A, run A and the current one (B) from the same start. */
function abPanel(ctx) {
  const { h, get, button } = ctx;
  const abSteps = h("input", { type: "number", min: "1", value: "10", class: "fv-ab-steps", "aria-label": "Steps for A/B" });
  const pinButton = button("fv-pin", "Pin as A", () => ctx.act("pin"), "Keep this configuration as A");
  const compareButton = button("fv-compare", "Run A vs B", () => ctx.act("compare", { steps: Number(abSteps.value) || 10 }),
    "Train A and the current configuration B from the same start, on the same batch and seed");
  const body = h("div", { class: "fv-ab-body" });
  const node = h("div", { class: "fv-ab" }, h("div", { class: "fv-row" }, h("span", { class: "fv-label" }, "A/B"),
    pinButton, compareButton, h("label", {}, "steps ", abSteps)), body);
  ctx.needsKernel(pinButton, compareButton, abSteps);

  function draw() {
    const pinned = get("pinned") || {};
    const cmp = get("comparison") || {};
    if (!pinned.scenario) {
      body.replaceChildren(h("p", { class: "fv-hint" }, "Pin the current configuration as A, change it (that is B), " +
        "then run both from the same start on the same batch and seed."));
      return;
    }
    const st = ctx.states();
    const tab = get("table") || { segments: [] };
    const slots = (get("optimizer") || {}).slots ?? 1;
    const nowCost = configurationCost(tab, st);
    const bMem = trainingMemory(ctx.blocks(), st, nowCost.saved, slots);
    const a = cmp.a || pinned;
    const b = cmp.b && cmp.b.scenario === ctx.shownScenario() ? cmp.b
      : { label: "current configuration", backwardFlops: nowCost.backwardFlops, memory: bMem.total, trainable: bMem.trainable };
    const row = (label, key, fmtValue) => h("tr", {}, h("th", { scope: "row" }, label),
      h("td", { class: "fv-ab-a" }, a[key] === undefined ? "—" : fmtValue(a[key])),
      h("td", { class: "fv-ab-b" }, b[key] === undefined ? "—" : fmtValue(b[key])));
    const steps = cmp.steps;
    const tableAB = h("table", { class: "fv-ab-table" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { scope: "col" }, "A (pinned)"), h("th", { scope: "col" }, "B (now)"))),
      h("tbody", {},
        h("tr", {}, h("th", { scope: "row" }, "configuration"), h("td", {}, a.label || ""), h("td", {}, b.label || "")),
        row(steps ? `loss after ${steps} steps` : "loss after k steps", "finalLoss", (v) => v.toFixed(3)),
        row("backward compute", "backwardFlops", (v) => human(v, "FLOP")),
        row("training memory", "memory", (v) => human(v, "B")),
        row("trainable parameters", "trainable", (v) => human(v))));
    const children = [tableAB];
    if (cmp.a && cmp.b) {
      children.push(lossChart([{ points: cmp.a.losses.map((v, i) => [i + 1, v]), cls: "fv-curve-a" },
        { points: cmp.b.losses.map((v, i) => [i + 1, v]), cls: "fv-curve-b" }], "loss: A dashed, B solid (same batch, seed)"));
    }
    body.replaceChildren(h("div", { class: "fv-ab-grid" }, children));
  }

  return { node, draw };
}

/** The scenario box: the string for what is drawn, Copy, and paste-and-Open. In a Voila page the
 *  address follows the scenario; in offline mode Copy gives a link with `#scenario=` instead. */
function scenarioPanel(ctx) {
  const { h, get, button } = ctx;
  const output = h("input", { class: "fv-scenario", readonly: true, "aria-label": "Scenario string" });
  const copyButton = button("fv-copy", "Copy", copy, ctx.offline ? "Copy a link to this page in this configuration" : undefined);
  const link = ctx.offline ? h("input", { class: "fv-scenario-link", readonly: true, hidden: true, "aria-label": "Link to this scenario" }) : null;
  const pasteIn = h("input", { class: "fv-paste", placeholder: "paste a scenario or link", "aria-label": "Paste a scenario",
    onkeydown: (e) => { if (e.key === "Enter") open(); } });
  const openButton = button("fv-open", "Open", open, "Put the simulator in the pasted scenario");
  const node = h("div", { class: "fv-row fv-share" }, h("span", { class: "fv-label" }, "Scenario"),
    output, copyButton, link, pasteIn, openButton);
  ctx.needsKernel(pasteIn, openButton);

  /** The scenario string, and in a Voila page the address, for what is drawn now. */
  function draw() {
    const scenario = scenarioWith(get("scenario") || "", ctx.order(), ctx.view.frozen, ctx.view.switches);
    if (scenario === output.value) return;
    output.value = scenario;
    if (link && !link.hidden) link.value = scenarioLink(location.href, scenario);
    if (get("url_state") && document.body && document.body.dataset.voila !== undefined && scenario) {
      // Off the click's path (replaceState can take ~10 ms): the address follows a moment later.
      ctx.later("address", () => history.replaceState(null, "", `${location.pathname}?${scenario}`), 150);
    }
  }

  async function copy() {
    if (link) {   // offline: a link to this page that opens this scenario
      link.value = scenarioLink(location.href, output.value);
      link.hidden = false;
      link.select();
      try { await navigator.clipboard.writeText(link.value); ctx.flash("Link copied"); }
      catch { document.execCommand && document.execCommand("copy"); ctx.flash("Link selected: copy it"); }
      return;
    }
    output.select();
    try { await navigator.clipboard.writeText(output.value); ctx.flash("Scenario copied"); }
    catch { document.execCommand && document.execCommand("copy"); ctx.flash("Scenario selected: copy it"); }
  }

  function open() {
    const text = pasteIn.value.trim();
    if (text) ctx.act("scenario", { text });
  }

  return { node, draw, value: () => output.value };
}

/** The palette's colours as CSS variables on the widget (the theme keeps its own text colours). */
function applyPalette(ctx) {
  for (const [key, value] of Object.entries(ctx.get("palette") || {})) {
    if (!THEME_KEYS.has(key)) ctx.root.style.setProperty(`--fv-${key}`, value);
  }
}

/** What clicks do: a toggle, a preset or a switch redraws here at once and then tells the kernel;
 *  the kernel's buttons wait for its answer (or give up). Returns the functions panels call. */
function interactions(ctx, panels) {
  const { view, root, model, get } = ctx;
  const { status, diagram, cost, controls, switches, report, ab, share } = panels;

  function drawStatic() {
    status.draw();
    controls.draw();
    applyPalette(ctx);
  }

  function drawConfiguration() {
    const st = ctx.states();
    const table = get("table") || { segments: [] };
    const backward = backwardPath(ctx.order(), table.parameterBlocks || [], st);
    diagram.draw(st, backward);
    cost.draw(st, table, backward);
    switches.draw();
    share.draw();
  }

  /** Everything from the model: the first draw, a new architecture, a kernel's answer. */
  function syncFromModel() {
    view.frozen = get("frozen") || [];
    view.switches = { ...(get("switches") || {}) };
    drawAll();
  }

  function drawAll() {
    drawStatic();
    drawConfiguration();
    report.draw();
    ab.draw();
  }

  function act(action, extra = {}) {
    if (view.pending || ctx.offline) return;
    const text = { step: "Training one step…", train: "Training…", rank: "Computing every block's gradient…",
      compare: "Running A and B…", arch: "Loading the model…", scenario: "Opening the scenario…", reset: "Resetting…",
      pin: "Pinning…", settings: "Applying…" }[action] || "Working…";
    view.pending = { kind: action, started: performance.now(), text };
    root.dataset.kernel = "busy";
    status.showError(get("error") || "");
    status.show();
    setButtons();
    if (action === "step") diagram.startDots();
    ctx.later("pending", giveUp, Number(root.dataset.pendingTimeoutMs) || PENDING_TIMEOUT_MS);
    model.send({ action, ...extra });
  }

  /** The kernel did not answer in time (it died, restarted, or hangs): stop waiting, say so. */
  function giveUp() {
    if (!view.pending) return;
    const { kind, started } = view.pending;
    view.pending = null;
    diagram.stopDots();
    root.dataset.kernel = "lost";
    status.showError(`No answer from the kernel after ${Math.round((performance.now() - started) / 1000)} s ` +
      `(“${kind}”): it may have stopped or restarted. The buttons work again; if nothing happens when you ` +
      "press one, restart the kernel and run the cell again.");
    status.show();
    setButtons();
  }

  function finishPending(kind) {
    if (!view.pending) return;
    const { started } = view.pending;
    const done = view.pending.kind;
    view.pending = null;
    ctx.cancel("pending");
    root.dataset.kernel = "idle";
    status.show();
    setButtons();
    markDrawn(kind || done, started);
  }

  function setButtons() {
    const waiting = Boolean(view.pending);
    for (const b of root.querySelectorAll("button, select, .fv-switch")) b.disabled = waiting || b.classList.contains("fv-needs-kernel");
  }

  function commitConfiguration() {
    model.set("frozen", [...view.frozen]);
    model.set("switches", { ...view.switches });
    if (!ctx.offline) model.save_changes();   // offline: no kernel to tell, nothing to wait for
  }

  /** A change of configuration made here: draw it, announce it, time it, tell the kernel. */
  function configure(kind, change, said) {
    if (view.pending) return;
    const started = performance.now();
    change();
    if (view.notice) { view.notice = ""; status.show(); }
    drawConfiguration();
    cost.announce(said());
    report.drawStates();
    markDrawn(kind, started);
    commitConfiguration();
  }

  function toggle(name) {
    configure("toggle", () => {
      const isFrozen = view.frozen.includes(name);
      view.frozen = isFrozen ? view.frozen.filter((b) => b !== name) : [...view.frozen, name];
    }, () => `${name} is now ${stateWord(ctx.states()[name])}.`);
  }

  function applyPreset(kind, k) {
    const label = (PRESETS.find(([name]) => name === kind) || [kind, kind])[1];
    configure("preset", () => {
      const chosen = preset(kind, ctx.order(), ctx.headName(), k());
      view.frozen = chosen.frozen;
      Object.assign(view.switches, chosen.switches);
    }, () => `Preset ${label} applied.`);
  }

  function setSwitch(key, value) {
    const label = ((vocabulary.switches || []).find((w) => w.key === key) || {}).label || key;
    configure("switch", () => { view.switches[key] = value; }, () => `${label}: ${value ? "on" : "off"}.`);
  }

  function markDrawn(kind, started) {
    ctx.frame(() => {
      const ms = performance.now() - started;
      root.dataset[`${kind}Ms`] = ms.toFixed(1);
      root.dispatchEvent(new CustomEvent("freeze-view:drawn", { bubbles: true, detail: { kind, ms } }));
    });
  }

  return { act, toggle, applyPreset, setSwitch, finishPending, drawStatic, drawConfiguration, syncFromModel, drawAll,
           flash: status.flash, shownScenario: share.value };
}

/** The kernel's changes, each redrawing what it touches (every listener undone by ctx.close). */
function listenToModel(ctx, panels) {
  const { view, get } = ctx;
  const { status, report, ab, share } = panels;
  const on = ctx.listen;
  on("change:frozen", () => { view.frozen = get("frozen") || []; ctx.drawConfiguration(); report.drawStates(); ab.draw(); });
  on("change:switches", () => { view.switches = { ...(get("switches") || {}) }; ctx.drawConfiguration(); report.drawStates(); });
  on("change:table", () => { ctx.drawConfiguration(); ab.draw(); });
  on("change:scenario", () => share.draw());
  on("change:report", () => {
    report.draw();
    const step = (get("report") || {}).step || 0;
    if (view.pending && view.pending.kind === "step" && step !== view.lastReportStep) ctx.finishPending("step");
    view.lastReportStep = step;
  });
  on("change:history", () => report.draw());
  on("change:ranking", () => report.draw());
  on("change:pinned", () => ab.draw());
  on("change:comparison", () => ab.draw());
  on("change:error", () => status.showError(get("error") || ""));
  on("change:busy", () => status.show());
  for (const key of ["arch", "arch_options", "weights_note", "optimizer", "seed", "palette", "blocks"]) {
    on(`change:${key}`, () => { ctx.drawStatic(); if (key === "blocks") ctx.syncFromModel(); });
  }
  on("msg:custom", (msg) => {
    if (msg && msg.kind === "done") {
      if (msg.action !== "step") ctx.syncFromModel();
      ctx.finishPending(msg.action);
    }
  });
}

/** Offline mode: a `#scenario=...` in the page address sets the frozen blocks and the switches
 *  before the first draw; what needs a kernel is left out and the status line says so. */
function applyLinkScenario(ctx, status) {
  const text = scenarioFromHash(typeof location === "undefined" ? "" : location.hash);
  if (text === null) return;
  let decoded;
  try {
    decoded = decodeScenario(text);
  } catch (error) {
    ctx.root.dataset.linkScenario = "invalid";
    status.notice(`The scenario in the link could not be read: ${error.message}`);
    return;
  }
  const plan = scenarioToApply(decoded, { arch: ctx.get("arch"), order: ctx.order(), seed: ctx.get("seed"),
    optimizer: ctx.get("optimizer") || {} });
  if (plan.frozen) ctx.view.frozen = plan.frozen;
  if (plan.switches) Object.assign(ctx.view.switches, plan.switches);
  ctx.model.set("frozen", [...ctx.view.frozen]);
  ctx.model.set("switches", { ...ctx.view.switches });
  ctx.root.dataset.linkScenario = plan.skipped.length ? "partial" : "applied";
  if (plan.skipped.length) {
    status.notice(`Opened the link's scenario in part: ${plan.skipped.join("; ")}.`);
  } else {
    status.flash("Opened the scenario in the link");
  }
}

function render({ model, el }) {
  useVocabulary(model.get("vocabulary"));
  const ctx = widgetContext(model, el);
  const panels = {
    status: statusPanel(ctx),
    presets: presetPanel(ctx),
    diagram: diagramPanel(ctx),
    cost: costPanel(ctx),
    controls: controlsPanel(ctx),
    switches: switchPanel(ctx),
    report: reportPanel(ctx),
    ab: abPanel(ctx),
    share: scenarioPanel(ctx),
  };
  Object.assign(ctx, interactions(ctx, panels));
  const { status, presets, diagram, cost, controls, switches, report, ab, share } = panels;
  ctx.root.append(status.top, presets.node, diagram.node, cost.flowLine, cost.node, ...controls.nodes, switches.node,
    ...report.nodes, ab.node, share.node, status.error, cost.announcer);
  if (ctx.offline) applyLinkScenario(ctx, status);
  listenToModel(ctx, panels);
  ctx.drawAll();
  status.showError(model.get("error") || "");
  return () => {   // the view is removed (cell cleared, notebook closed): nothing may fire later
    diagram.stopDots();
    ctx.close();
  };
}

export default { render };
