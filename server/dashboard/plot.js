// Small SVG plots for the dashboard (no libraries): axes with round ticks, lines with one point per
// datum, and scatter plots coloured by a number. Every point is a <circle class="pt ..."> with a <title>,
// so a test (or an operator hovering) can read the values back.
"use strict";

const Plot = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const M = { left: 54, right: 16, top: 30, bottom: 42 };

  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function text(parent, x, y, str, attrs) {
    const t = el("text", Object.assign({ x, y }, attrs || {}), parent);
    t.textContent = str;
    return t;
  }

  // Round tick values covering [lo, hi] (about n of them).
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(s => s * mag).find(s => s >= raw) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
    return out;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e4 || a < 1e-2)) return v.toExponential(1);
    return String(+v.toFixed(2));
  }

  function viewSize(svg) {
    const vb = svg.viewBox.baseVal;
    return { w: vb && vb.width ? vb.width : 480, h: vb && vb.height ? vb.height : 280 };
  }

  function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }

  function message(svg, str) {
    clear(svg);
    const { w, h } = viewSize(svg);
    text(svg, w / 2, h / 2, str, { class: "plot-message", "text-anchor": "middle" });
  }

  // Axes, grid and labels; returns scales into the plot area.
  function frame(svg, xr, yr, opts) {
    clear(svg);
    const { w, h } = viewSize(svg);
    const right = opts.right || M.right;
    const x0 = M.left, x1 = w - right, y0 = h - M.bottom, y1 = M.top;
    const xt = opts.integerX ? ticks(xr[0], xr[1], Math.min(8, Math.max(1, xr[1] - xr[0]))).filter(Number.isInteger)
                             : ticks(xr[0], xr[1], 6);
    const yt = ticks(yr[0], yr[1], 5);
    const xlo = Math.min(xr[0], xt[0]), xhi = Math.max(xr[1], xt[xt.length - 1]);
    const ylo = Math.min(yr[0], yt[0]), yhi = Math.max(yr[1], yt[yt.length - 1]);
    const sx = v => x0 + (v - xlo) / (xhi - xlo || 1) * (x1 - x0);
    const sy = v => y0 - (v - ylo) / (yhi - ylo || 1) * (y0 - y1);
    const axes = el("g", { class: "axes" }, svg);
    for (const v of yt) {
      el("line", { x1: x0, x2: x1, y1: sy(v), y2: sy(v), class: "grid" }, axes);
      text(axes, x0 - 6, sy(v) + 4, fmt(v), { "text-anchor": "end", class: "tick" });
    }
    for (const v of xt) {
      el("line", { x1: sx(v), x2: sx(v), y1: y0, y2: y0 + 4, class: "axis" }, axes);
      text(axes, sx(v), y0 + 16, fmt(v), { "text-anchor": "middle", class: "tick" });
    }
    el("line", { x1: x0, x2: x1, y1: y0, y2: y0, class: "axis" }, axes);
    el("line", { x1: x0, x2: x0, y1: y0, y2: y1, class: "axis" }, axes);
    text(axes, (x0 + x1) / 2, h - 6, opts.xlabel || "", { "text-anchor": "middle", class: "label" });
    const yl = text(axes, 0, 0, opts.ylabel || "", { "text-anchor": "middle", class: "label" });
    yl.setAttribute("transform", `translate(14 ${(y0 + y1) / 2}) rotate(-90)`);
    return { sx, sy, x0, x1, y0, y1, w, h };
  }

  function extent(values, pad) {
    const v = values.filter(x => x !== null && x !== undefined && isFinite(x));
    if (!v.length) return [0, 1];
    let lo = Math.min(...v), hi = Math.max(...v);
    if (hi === lo) { hi = lo + 1; }
    const p = (hi - lo) * (pad || 0);
    return [lo - p, hi + p];
  }

  // series: [{name, cls, values: [number|null per x], dashed}] over xs; xr: x range to show.
  function lines(svg, xs, series, opts) {
    const all = series.flatMap(s => s.values);
    if (!xs.length || all.every(v => v === null)) { message(svg, opts.empty || "no data yet"); return; }
    const yr = extent(all.concat([0]), 0.05);
    yr[0] = Math.min(0, yr[0]);
    const f = frame(svg, opts.xrange || extent(xs), yr, Object.assign({ integerX: true }, opts));
    series.forEach((s, k) => {
      const g = el("g", { class: `series ${s.cls}` }, svg);
      const pts = xs.map((x, i) => [x, s.values[i]]).filter(p => p[1] !== null && isFinite(p[1]));
      if (pts.length > 1) {
        el("polyline", { points: pts.map(p => `${f.sx(p[0])},${f.sy(p[1])}`).join(" "), class: "line" + (s.dashed ? " dashed" : "") }, g);
      }
      for (const [x, y] of pts) {
        const c = el("circle", { cx: f.sx(x), cy: f.sy(y), r: 3.2, class: `pt pt-${s.cls}`, "data-generation": x, "data-value": y }, g);
        el("title", {}, c).textContent = `generation ${x}: ${s.name} ${fmt(y)}`;
      }
      // legend: one row above the plot area
      const ly = 13, lx = f.x0 + 96 * k;
      const lg = el("g", { class: `legend series ${s.cls}` }, svg);
      el("line", { x1: lx, x2: lx + 18, y1: ly, y2: ly, class: "line" + (s.dashed ? " dashed" : "") }, lg);
      el("circle", { cx: lx + 9, cy: ly, r: 3 }, lg);
      text(lg, lx + 24, ly + 4, s.name, { class: "legend-text" });
    });
  }

  // Perceptually ordered colours (viridis, by its key stops) for t in [0, 1].
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                   [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];
  function viridis(t) {
    t = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(t)), u = t - i;
    const c = VIRIDIS[i].map((a, j) => Math.round(a + u * (VIRIDIS[i + 1][j] - a)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  // points: [{x, y, c (colour value), label, highlight}]; colour bar from crange on the right.
  function scatter(svg, points, opts) {
    if (!points.length) { message(svg, opts.empty || "no data yet"); return; }
    const f = frame(svg, extent(points.map(p => p.x), 0.05), extent(points.map(p => p.y), 0.08),
                    Object.assign({ right: 64 }, opts));
    const [c0, c1] = opts.crange;
    const col = v => viridis((v - c0) / ((c1 - c0) || 1));
    const newest = points.filter(p => p.highlight).sort((a, b) => a.x - b.x);
    if (newest.length > 1) {
      el("polyline", { points: newest.map(p => `${f.sx(p.x)},${f.sy(p.y)}`).join(" "), class: "front-line" }, svg);
    }
    const g = el("g", { class: "points" }, svg);
    for (const p of points.slice().sort((a, b) => (a.highlight - b.highlight) || (a.c - b.c))) {
      const c = el("circle", {
        cx: f.sx(p.x), cy: f.sy(p.y), r: p.highlight ? 5 : 3.5, fill: col(p.c),
        class: "pt pt-front" + (p.highlight ? " newest" : ""), "data-generation": p.c,
      }, g);
      el("title", {}, c).textContent = p.label;
    }
    // colour bar
    const bx = f.w - 44, by0 = f.y0, by1 = f.y1, n = 24;
    const bar = el("g", { class: "colorbar" }, svg);
    for (let i = 0; i < n; i++) {
      const ya = by0 - (i / n) * (by0 - by1), yb = by0 - ((i + 1) / n) * (by0 - by1);
      el("rect", { x: bx, y: yb, width: 10, height: ya - yb + 0.5, fill: viridis(i / (n - 1)) }, bar);
    }
    text(bar, bx + 14, by0 + 4, String(c0), { class: "tick" });
    text(bar, bx + 14, by1 + 8, String(c1), { class: "tick" });
    const lab = text(bar, 0, 0, opts.clabel || "", { "text-anchor": "middle", class: "label" });
    lab.setAttribute("transform", `translate(${bx - 6} ${(by0 + by1) / 2}) rotate(-90)`);
  }

  // The neuron's reference responses: every repeat (dots), the running estimate (line) with its 95% interval
  // (band), the start estimate and the collapse level (dashed horizontal lines).
  // pts: [{x, y, mean, low, high, label}]; opts.start, opts.floor: numbers or null.
  function health(svg, pts, opts) {
    if (!pts.length) { message(svg, opts.empty || "no data yet"); return; }
    const ys = pts.flatMap(p => [p.y, p.low, p.high]).concat([0, opts.start ?? 0]);
    const yr = extent(ys, 0.05);
    yr[0] = Math.min(0, yr[0]);
    const f = frame(svg, [1, Math.max(2, pts[pts.length - 1].x)], yr, Object.assign({ integerX: true }, opts));
    const band = pts.map(p => `${f.sx(p.x)},${f.sy(p.high)}`).concat(
      pts.slice().reverse().map(p => `${f.sx(p.x)},${f.sy(Math.max(yr[0], p.low))}`));
    el("polygon", { points: band.join(" "), class: "band" }, svg);
    for (const [v, cls, name] of [[opts.start, "start", "start"], [opts.floor, "floor", "collapse below"]]) {
      if (v === null || v === undefined) continue;
      el("line", { x1: f.x0, x2: f.x1, y1: f.sy(v), y2: f.sy(v), class: `hline ${cls}` }, svg);
      text(svg, f.x1 - 4, f.sy(v) - 4, `${name} ${fmt(v)}`, { "text-anchor": "end", class: `hlabel ${cls}` });
    }
    if (pts.length > 1) {
      el("polyline", { points: pts.map(p => `${f.sx(p.x)},${f.sy(p.mean)}`).join(" "), class: "line running" }, svg);
    }
    const g = el("g", { class: "series refresp" }, svg);
    for (const p of pts) {
      const c = el("circle", { cx: f.sx(p.x), cy: f.sy(p.y), r: 2.6, class: "pt pt-refresp", "data-value": p.y,
                                "data-mean": p.mean, "data-generation": p.generation }, g);
      el("title", {}, c).textContent = p.label;
    }
    const ly = 13, lg = el("g", { class: "legend" }, svg);
    el("circle", { cx: f.x0 + 9, cy: ly, r: 3, class: "pt-refresp" }, lg);
    text(lg, f.x0 + 18, ly + 4, "each repeat", { class: "legend-text" });
    el("line", { x1: f.x0 + 110, x2: f.x0 + 128, y1: ly, y2: ly, class: "line running" }, lg);
    text(lg, f.x0 + 134, ly + 4, "running mean ± 95%", { class: "legend-text" });
  }

  return { lines, scatter, health, viridis, message, ticks };
})();
