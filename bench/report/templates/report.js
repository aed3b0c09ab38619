// The page's behaviour: sortable tables, filters by task / model / method, plotly.js unpacked from the inlined
// gzip bundle, the Pareto figures drawn at load and the loss figures when their cell is opened.
(function () {
  "use strict";
  window.__reportReady = false;
  const all = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const state = { task: "", model: "", method: "" };

  // ---- sorting ----------------------------------------------------------------------------------
  function sortBy(th) {
    const table = th.closest("table");
    const idx = Array.from(th.parentNode.children).indexOf(th);
    const dir = th.dataset.dir === "desc" ? "asc" : "desc";
    all("thead th", table).forEach((h) => delete h.dataset.dir);
    th.dataset.dir = dir;
    const numeric = th.dataset.sort === "num";
    const key = (tr) => {
      const cell = tr.children[idx];
      const raw = cell ? (cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent) : "";
      return numeric ? parseFloat(raw) : raw.trim().toLowerCase();
    };
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (numeric) {  // rows without a number go last either way
        if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);
        return dir === "asc" ? x - y : y - x;
      }
      return dir === "asc" ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach((r) => body.appendChild(r));
  }
  all("table.sortable thead th[data-sort]").forEach((th) => th.addEventListener("click", () => sortBy(th)));

  // ---- filters ----------------------------------------------------------------------------------
  const okTask = (t) => !state.task || !t || t === state.task;
  const okModel = (m) => !state.model || !m || m.split(", ").includes(state.model);
  const okRow = (r) => !state.method || (r || "").toLowerCase().includes(state.method);

  function applyFilters() {
    all("#main-table [data-task]").forEach((c) => { c.hidden = !okTask(c.dataset.task); });
    all("#main-table tr.method-row").forEach((tr) => { tr.hidden = !(okModel(tr.dataset.model) && okRow(tr.dataset.row)); });
    all("table.extra tbody tr, table.gaps tbody tr, details.cell").forEach((el) => {
      el.hidden = !(okTask(el.dataset.task) && okModel(el.dataset.model) && okRow(el.dataset.row));
    });
    all("div.perf").forEach((el) => { el.hidden = !okModel(el.dataset.model); });
    all("table.perf-table tbody tr").forEach((tr) => { tr.hidden = !okRow(tr.dataset.row); });
    all(".pareto-fig").forEach((div) => {
      const show = okTask(div.dataset.task);
      const wasHidden = div.hidden;
      div.hidden = !show;
      if (show && window.Plotly && div.data) {
        const visible = div.data.map((tr) => okModel(tr.meta.model) && okRow(tr.meta.row));
        if (div.dataset.visible !== visible.join()) {  // redraw only when the traces shown change
          window.Plotly.restyle(div, { visible: visible });
          div.dataset.visible = visible.join();
        }
        if (wasHidden) window.Plotly.Plots.resize(div);  // drawn while hidden: fit it to its box
      }
    });
  }
  const bind = (id, key, lower) => {
    const el = document.getElementById(id);
    if (!el) return;
    el.addEventListener("input", () => { state[key] = lower ? el.value.trim().toLowerCase() : el.value; applyFilters(); });
  };
  bind("filter-task", "task", false);
  bind("filter-model", "model", false);
  bind("filter-method", "method", true);

  // ---- figures ----------------------------------------------------------------------------------
  async function loadPlotly() {
    const packed = document.getElementById("plotly-gz").textContent.trim();
    const bin = atob(packed);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const source = await new Response(stream).text();
    const script = document.createElement("script");
    script.textContent = source;
    document.head.appendChild(script);
  }

  function draw(div) {
    const fig = JSON.parse(document.getElementById(div.dataset.figure).textContent);
    return window.Plotly.newPlot(div, fig.data, fig.layout || {}, { responsive: true, displaylogo: false });
  }

  function openRun(id) {
    const tr = document.getElementById(id);
    if (!tr) return;
    const cell = tr.closest("details");
    if (cell) cell.open = true;
    all("tr.flash").forEach((r) => r.classList.remove("flash"));
    tr.classList.add("flash");
    tr.scrollIntoView({ block: "center" });
  }

  all("details.cell").forEach((d) => d.addEventListener("toggle", () => {
    if (!d.open || !window.Plotly) return;
    all(".plotly-fig.lazy", d).forEach((div) => { div.classList.remove("lazy"); draw(div); });
  }));

  async function start() {
    if (typeof DecompressionStream === "undefined") {
      document.getElementById("plotly-missing").hidden = false;
      return;
    }
    await loadPlotly();
    performance.mark("report:plotly-loaded");
    const figs = all(".pareto-fig");
    await Promise.all(figs.map(draw));
    figs.forEach((div) => { div.dataset.visible = div.data.map(() => true).join(); });
    figs.forEach((div) => div.on("plotly_click", (ev) => {
      const cd = ev.points && ev.points[0] && ev.points[0].customdata;
      if (cd && cd[0]) openRun(cd[0]);
    }));
    applyFilters();
    performance.mark("report:figures-drawn");
  }
  start().catch((e) => console.error("report: figures could not be drawn:", e))
    .finally(() => { window.__reportReady = true; });
})();
